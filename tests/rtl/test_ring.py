"""The ring router (`rtl.core.ring.Ring`) alone on Icarus: random sequences of ALLGATHER,
ARGMAXALL and SYNC on one device of rings of 1 to 4, its neighbours played by cocotbext-axi
AXI4-Stream models with random pauses on both links and on the vector buffer's ports, checked
against the `isa` backend's collective (sim/ring/cocotb_ring.py)."""

from __future__ import annotations

import json

import pytest

from sim import runner
from sim.ring import top

SIMULATOR = "icarus"
pytestmark = pytest.mark.simulator(SIMULATOR)


@pytest.fixture
def build(sim_build):
    return sim_build(top, SIMULATOR, "ring")


CASES = {
    # devices, device, collectives, pause
    "alone_on_the_ring": (1, 0, 6, 0.3),
    "two_devices_no_stalls": (2, 1, 8, 0.0),
    "two_devices_stalls": (2, 0, 10, 0.4),
    "three_devices_stalls": (3, 1, 10, 0.3),
    "four_devices_heavy_stalls": (4, 2, 10, 0.6),
    "four_devices_last_device": (4, 3, 8, 0.2),
}


@pytest.mark.rtl
@pytest.mark.parametrize("name", list(CASES))
def test_collectives_match_the_isa_cluster(build, name):
    devices, device, collectives, pause = CASES[name]
    sim, build_dir = build
    run_dir = build_dir / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    case = {"seed": sum(map(ord, name)), "devices": devices, "device": device,
            "collectives": collectives, "pause": pause}
    runner.run(sim, build_dir, top.TOPLEVEL, "sim.ring.cocotb_ring", test_dir=run_dir,
               env={"TANDEM_RING_CASE": json.dumps(case)})


@pytest.mark.rtl
def test_a_corrupted_buffer_word_fails_the_comparison(build, capfd):
    """The bench flips one bit of the vector buffer it reads back when the 3rd collective
    retires: the run must fail on that collective."""
    sim, build_dir = build
    run_dir = build_dir / "runs" / "corrupted"
    run_dir.mkdir(parents=True, exist_ok=True)
    case = {"seed": 5, "devices": 2, "device": 1, "collectives": 4, "pause": 0.0,
            "corrupt": 2}
    with pytest.raises(SystemExit):
        runner.run(sim, build_dir, top.TOPLEVEL, "sim.ring.cocotb_ring", test_dir=run_dir,
                   env={"TANDEM_RING_CASE": json.dumps(case)})
    assert "1 vector-buffer words differ, first at [0]" in capfd.readouterr().out
