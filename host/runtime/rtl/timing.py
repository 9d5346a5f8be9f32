"""The RTL's measured cycles in the timing model's terms: per-category breakdowns and the
instruction-by-instruction comparison with the `isa` backend.

The RTL reports when each instruction issued and completed (`RtlDevice.timeline`); the `isa`
backend's trace says which category each executed instruction belongs to. Both run the same
program on the same data, so their executed instruction streams are equal pc for pc (checked).
The breakdown applies `hw.perf`'s rule to the RTL's times: each cycle of the run goes to the
instruction whose completion advanced the finishing time, so the categories sum to the total.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hw.perf import CATEGORIES

__all__ = ["Attribution", "attribute", "compare"]


@dataclass
class Attribution:
    """Cumulative figures after each executed instruction (in issue order)."""

    finish: list[float]  #: the latest completion so far, cycles from the first issue
    breakdown: list[dict[str, float]]  #: cumulative cycles per category, summing to `finish`

    @property
    def cycles(self) -> float:
        return self.finish[-1] if self.finish else 0.0

    @property
    def total(self) -> dict[str, float]:
        return dict(self.breakdown[-1]) if self.breakdown else dict.fromkeys(CATEGORIES, 0.0)


def _check_same_stream(timeline: Sequence[tuple], trace: Sequence[dict]) -> None:
    if len(timeline) != len(trace):
        raise ValueError(f"the RTL executed {len(timeline)} instructions, the isa backend "
                         f"{len(trace)}")
    for i, ((pc, _, _), rec) in enumerate(zip(timeline, trace, strict=True)):
        if pc != rec["pc"]:
            raise ValueError(f"executed instruction {i}: the RTL ran pc {pc}, the isa backend "
                             f"pc {rec['pc']}")


def attribute(timeline: Sequence[tuple[int, int, int]], trace: Sequence[dict]) -> Attribution:
    """The breakdown of an RTL `timeline` ((pc, issue, done) per executed instruction), with
    each instruction's category from the `isa` trace of the same run. Cycles count from the
    first instruction's issue (the program loader before it is not part of the model)."""
    _check_same_stream(timeline, trace)
    origin = timeline[0][1] if timeline else 0
    running = dict.fromkeys(CATEGORIES, 0.0)
    finish = 0.0
    out = Attribution([], [])
    for (_, _, done), rec in zip(timeline, trace, strict=True):
        done -= origin
        if done > finish:
            running[rec["category"]] += done - finish
            finish = float(done)
        out.finish.append(finish)
        out.breakdown.append(dict(running))
    return out


def compare(timeline: Sequence[tuple[int, int, int]], trace: Sequence[dict]) -> dict:
    """The RTL against the timing model for one device: total cycles, their ratio, the
    breakdown of each and its difference, and per opcode the summed issue-to-done latency."""
    rtl = attribute(timeline, trace)
    model = dict.fromkeys(CATEGORIES, 0.0)
    finish = 0.0
    for rec in trace:
        if rec["done"] > finish:
            model[rec["category"]] += rec["done"] - finish
            finish = rec["done"]
    per_op: dict[str, dict[str, float]] = {}
    for (_, issue, done), rec in zip(timeline, trace, strict=True):
        entry = per_op.setdefault(rec["op"], {"count": 0, "rtl_cycles": 0.0,
                                              "model_cycles": 0.0})
        entry["count"] += 1
        entry["rtl_cycles"] += done - issue
        entry["model_cycles"] += rec["done"] - rec["start"]
    rtl_total = rtl.total
    return {
        "rtl_cycles": rtl.cycles,
        "model_cycles": finish,
        "ratio": rtl.cycles / finish if finish else float("nan"),
        "rtl_breakdown": rtl_total,
        "model_breakdown": model,
        "difference": {k: rtl_total[k] - model[k] for k in CATEGORIES},
        "per_op": per_op,
    }
