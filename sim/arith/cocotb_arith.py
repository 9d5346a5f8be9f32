"""cocotb test run inside the simulator: clock one unit of `arith_top` through its vector
file and compare every output bit for bit with the model's prediction.

The case comes in TANDEM_ARITH_CASE (JSON): unit, select, n_in, n_out, seed, valid_rate and
ready_rate (out of 256), expected (a file of hex words), results (where the harness writes),
and max_cycles (a throughput bound, or null).
"""

from __future__ import annotations

import json
import os

import cocotb
from cocotb.triggers import RisingEdge, SimTimeoutError, with_timeout

from sim.tb import TB

_PERIOD_NS = 10


def read_hex(path: str, count: int) -> list[int]:
    """The first `count` words of a $readmemh-format file (comments and x words tolerated)."""
    words: list[int] = []
    with open(path) as f:
        for line in f:
            line = line.split("//")[0].strip()
            if not line or line.startswith("@"):
                continue
            for token in line.split():
                words.append(int(token, 16) if "x" not in token.lower() else -1)
                if len(words) == count:
                    return words
    return words


@cocotb.test()
async def stream_vectors(dut):
    case = json.loads(os.environ["TANDEM_ARITH_CASE"])
    unit = case["unit"]
    tb = TB(dut, clock=None, period_ns=_PERIOD_NS)  # the clock runs inside arith_top
    dut.select.value = case["select"]
    dut.n_in.value = case["n_in"]
    dut.n_out.value = case["n_out"]
    dut.seed.value = case["seed"]
    dut.valid_rate.value = case["valid_rate"]
    dut.ready_rate.value = case["ready_rate"]
    dut.dump.value = 0
    await tb.reset(cycles=3, settle=2)
    finished = bool(dut.done.value)
    if not finished:
        try:
            await with_timeout(RisingEdge(dut.done), case["timeout_cycles"] * _PERIOD_NS, "ns")
            finished = True
        except SimTimeoutError:
            pass  # the counts below say what went wrong
    # Let a misbehaving unit show extra outputs before counting.
    await tb.cycles(64)
    received = int(dut.received.value)
    violations = int(dut.violations.value)
    done_at = int(dut.done_at.value)
    dut._log.info("%s: %d inputs, %d outputs in %d cycles", unit, case["n_in"], received,
                  done_at)
    assert violations == 0, f"{unit}: {violations} stream protocol violations on the output"
    assert received == case["n_out"], f"{unit}: {received} outputs, expected {case['n_out']}"
    assert finished, f"{unit}: not finished after {case['timeout_cycles']} cycles"
    dut.dump.value = 1
    await tb.cycles(3)
    got = read_hex(case["results"], case["n_out"])
    want = read_hex(case["expected"], case["n_out"])
    bad = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    detail = ", ".join(f"#{k}: got {got[k]:#x} want {want[k]:#x}" for k in bad[:8])
    assert not bad, f"{unit}: {len(bad)} of {len(want)} outputs differ from the model: {detail}"
    if case["max_cycles"] is not None:
        assert done_at <= case["max_cycles"], (
            f"{unit}: {case['n_in']} inputs took {done_at} cycles without stalls, more than "
            f"{case['max_cycles']}")
