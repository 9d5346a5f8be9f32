"""Every `rtl.arith` unit against `hw.numerics`, bit for bit, on Verilator and Icarus.

One simulation build per simulator holds every unit (Verilator's C++ compile is the slow
step); each case loads its vectors at run time. The HDL harness drives random valid gaps and
random ready back-pressure and checks the output stream protocol.
"""

from __future__ import annotations

import zlib

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sim.arith import check, top
from sim.arith.units import UNITS, Case, UnitSpec

#: Per simulator: random inputs per unit (on top of the edge cases; Verilator also runs every
#: FP16 input through the FP16-input units) and the stall rates, out of 256.
RUNS = {
    "verilator": {"n_random": 100_000, "edges": "exhaustive", "valid_rate": 192,
                  "ready_rate": 160},
    "icarus": {"n_random": 10_000, "edges": "edges", "valid_rate": 208, "ready_rate": 176},
}


@pytest.fixture
def builds(sim_build):
    """(simulator, units, name) -> (runner, build dir), built once per session."""
    return lambda simulator, units=UNITS, name="arith": sim_build(top, simulator, name, units)


def _seed(unit: str) -> int:
    return zlib.crc32(unit.encode())


@pytest.mark.rtl
@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_unit_is_bit_exact_under_random_stalls(builds, simulator, unit):
    sim, build_dir = builds(simulator)
    settings = RUNS[simulator]
    run = check.run_case(sim, build_dir, simulator, unit, seed=_seed(unit), **settings)
    assert run.n_in >= settings["n_random"]


@pytest.mark.rtl
@pytest.mark.simulator("verilator")
@pytest.mark.parametrize("unit", list(UNITS))
def test_unit_takes_one_beat_per_cycle(builds, unit):
    """Without stalls every unit consumes an input per cycle (lanes: four rows fed
    round-robin), bounded in the cocotb test by inputs + FULL_RATE_SLACK cycles."""
    sim, build_dir = builds("verilator")
    run = check.run_case(sim, build_dir, "verilator", unit, n_random=3000, edges="none",
                         seed=_seed(unit) + 1, valid_rate=256, ready_rate=256, full_rate=True)
    assert run.n_out >= 1


@pytest.mark.rtl
@pytest.mark.simulator("icarus")
def test_a_single_wrong_bit_fails_the_comparison(builds, capfd):
    sim, build_dir = builds("icarus")
    with pytest.raises(SystemExit):
        check.run_case(sim, build_dir, "icarus", "fp16_mul", n_random=200, edges="none",
                       seed=7, valid_rate=200, ready_rate=200, corrupt=17)
    assert "1 of 200 outputs differ from the model: #17" in capfd.readouterr().out


class _IgnoresReady(wiring.Component):
    """Registers its input and presents it for one cycle whether taken or not."""

    def __init__(self):
        super().__init__({"i": In(stream.Signature(16)), "o": Out(stream.Signature(16))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(1)
        m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        return m


def _echo(rng, n, edge_set, full_rate):
    words = [int(w) for w in rng.integers(0, 1 << 16, n)]
    return Case(words, words)


@pytest.mark.rtl
@pytest.mark.simulator("icarus")
def test_the_harness_reports_a_unit_that_ignores_ready(builds, capfd):
    probe = {"ignores_ready": UnitSpec("ignores_ready", _IgnoresReady, _echo)}
    sim, build_dir = builds("icarus", probe, "probe")
    with pytest.raises(SystemExit):
        check.run_case(sim, build_dir, "icarus", "ignores_ready", n_random=500, edges="none",
                       seed=3, valid_rate=256, ready_rate=128, units=probe)
    assert "stream protocol violations on the output" in capfd.readouterr().out
