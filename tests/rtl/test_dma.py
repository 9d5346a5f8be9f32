# amaranth: UnusedElaboratable=no
# (constructors that raise leave half-built components behind; they are meant to be unused)
"""The AXI4 manager every HBM port uses, against cocotbext-axi's AxiRam: bursts, several
transactions outstanding, random pauses on every AXI channel and back-pressure on every client
stream, on Verilator and Icarus; and its parameter checks."""

from __future__ import annotations

import json

import pytest

from rtl.axi_port import AxiPort
from sim import runner
from sim.dma import top


@pytest.fixture
def builds(sim_build):
    """simulator -> (runner, build dir)."""
    return lambda simulator: sim_build(top, simulator, "axi_port")


def _run(builds, simulator: str, testcase: str, **case) -> None:
    sim, build_dir = builds(simulator)
    run_dir = build_dir / "runs" / f"{testcase}-{case.get('seed', 0)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    runner.run(sim, build_dir, top.TOPLEVEL, "sim.dma.cocotb_axi_port", test_dir=run_dir,
               testcase=testcase, env={"TANDEM_DMA_CASE": json.dumps(case)})


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
@pytest.mark.parametrize(("seed", "pause"), [(1, 0.3), (2, 0.6)])
def test_random_traffic_under_pauses(builds, simulator, seed, pause):
    _run(builds, simulator, "random_reads_and_writes", seed=seed, pause=pause, runs=30,
         timeout_us=2000)


@pytest.mark.rtl
@pytest.mark.simulator("verilator")
def test_streaming_hides_burst_latency(builds):
    _run(builds, "verilator", "long_read_streams_back_to_back")


@pytest.mark.rtl
@pytest.mark.simulator("icarus")
def test_a_corrupted_read_beat_fails_the_comparison(builds, capfd):
    """The bench flips one bit of the 6th beat read back from the port: the run must fail on
    that read run."""
    with pytest.raises(SystemExit):
        _run(builds, "icarus", "random_reads_and_writes", seed=3, pause=0.3, runs=3,
             timeout_us=2000, corrupt=5)
    assert "beats differs" in capfd.readouterr().out


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"readers": 0}, "readers must be a positive integer, not 0"),
    ({"max_burst": 300}, "max_burst must be an integer in 1..256, not 300"),
    ({"outstanding": 6}, "outstanding must be a power of two, not 6"),
])
def test_parameters_are_checked(kwargs, message):
    params = {**top.PARAMS, **kwargs}
    with pytest.raises(ValueError, match=f"^{message}$"):
        AxiPort(**params)
