"""The controller (`rtl.core.controller.Controller`, with its scoreboard) alone on Verilator:
assembled programs with loops, forward branches and register-indexed addresses, and random
programs, its engines played by cocotb models that take micro-ops under random back-pressure
and complete them after random delays; the issue stream, every micro-op's resolved operands
and register values, and the vector-range and HBM hazards checked against the `isa` backend
(sim/controller/cocotb_controller.py)."""

from __future__ import annotations

import json

import pytest

from sim import runner
from sim.controller import top

SIMULATOR = "verilator"
pytestmark = pytest.mark.simulator(SIMULATOR)


@pytest.fixture
def build(sim_build):
    return sim_build(top, SIMULATOR, "controller")


CASES = {
    # program, seed, pause, max_delay
    "loops_ready_engines": ("loops", 1, 0.0, 1),
    "loops_stalls": ("loops", 2, 0.5, 12),
    "dynamic_stalls": ("dynamic", 3, 0.4, 20),
    "random_a": ("random", 11, 0.3, 8),
    "random_b": ("random", 12, 0.6, 30),
}


@pytest.mark.rtl
@pytest.mark.parametrize("name", list(CASES))
def test_program_matches_the_isa_device(build, name):
    program, seed, pause, max_delay = CASES[name]
    sim, build_dir = build
    run_dir = build_dir / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    case = {"program": program, "seed": seed, "pause": pause, "max_delay": max_delay}
    runner.run(sim, build_dir, top.TOPLEVEL, "sim.controller.cocotb_controller",
               test_dir=run_dir, env={"TANDEM_CTRL_CASE": json.dumps(case)})


@pytest.mark.rtl
def test_a_corrupted_micro_op_fails_the_comparison(build, capfd):
    """The bench flips one bit (the pc field) of the 4th micro-op it samples from the DUT: the
    run must fail on exactly that micro-op."""
    sim, build_dir = build
    run_dir = build_dir / "runs" / "corrupted"
    run_dir.mkdir(parents=True, exist_ok=True)
    case = {"program": "loops", "seed": 1, "pause": 0.0, "max_delay": 1, "corrupt": 3}
    with pytest.raises(SystemExit):
        runner.run(sim, build_dir, top.TOPLEVEL, "sim.controller.cocotb_controller",
                   test_dir=run_dir, env={"TANDEM_CTRL_CASE": json.dumps(case)})
    assert "micro-op 3 (pc " in capfd.readouterr().out
