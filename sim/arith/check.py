"""Run one case of one unit: vectors from `units`, simulation on the shared build, and the
bit-exact comparison inside the cocotb test (`cocotb_arith`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runner
from . import top
from .units import UNITS

__all__ = ["CaseRun", "run_case"]

#: Cycles allowed beyond one per input when nothing stalls (pipeline fill, drain, the lanes'
#: accumulator loop).
FULL_RATE_SLACK = 64


@dataclass(frozen=True)
class CaseRun:
    """What a passing run covered."""

    n_in: int
    n_out: int


def _write_hex(path: Path, words: list[int]) -> None:
    path.write_text("".join(f"{w:x}\n" for w in words))


def run_case(sim, build_dir: Path, simulator: str, unit: str, *, n_random: int, edges: str,
             seed: int, valid_rate: int, ready_rate: int, full_rate: bool = False,
             corrupt: int | None = None, units=UNITS) -> CaseRun:
    """Simulate `unit` on `n_random` random inputs plus the `edges` set under the given stall
    rates (out of 256). A full-rate case also bounds the cycle count. `corrupt` flips the
    lowest bit of one expected word (to show the comparison catches a difference). `units` is
    what the build `sim` holds."""
    spec = units[unit]
    case = spec.case(np.random.default_rng(seed), n_random, edges, full_rate)
    if len(case.inputs) > top.VECTOR_DEPTH[simulator]:
        raise ValueError(f"{unit}: {len(case.inputs)} vectors exceed the harness memory "
                         f"({top.VECTOR_DEPTH[simulator]})")
    expected = list(case.expected)
    if corrupt is not None:
        expected[corrupt] ^= 1
    run_dir = Path(build_dir) / "runs" / unit
    run_dir.mkdir(parents=True, exist_ok=True)
    vectors, want, results = run_dir / "vectors.hex", run_dir / "expected.hex", \
        run_dir / "results.hex"
    _write_hex(vectors, case.inputs)
    _write_hex(want, expected)
    results.unlink(missing_ok=True)
    n_in, n_out = len(case.inputs), len(expected)
    settings = {
        "unit": unit, "select": top.select_index(unit, units), "n_in": n_in, "n_out": n_out,
        "seed": seed, "valid_rate": valid_rate, "ready_rate": ready_rate,
        "expected": str(want), "results": str(results),
        # 64 times the cycles the stall rates alone imply (a lone lane row adds 4x).
        "timeout_cycles": 64 * (n_in + 1000) * 256 // max(min(valid_rate, ready_rate), 1),
        "max_cycles": n_in + FULL_RATE_SLACK if full_rate else None,
    }
    runner.run(sim, build_dir, top.TOPLEVEL, "sim.arith.cocotb_arith",
               plusargs=[f"+{unit}_vectors={vectors}", f"+{unit}_results={results}"],
               env={"TANDEM_ARITH_CASE": json.dumps(settings)}, test_dir=run_dir)
    return CaseRun(n_in, n_out)
