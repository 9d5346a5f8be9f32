"""The W-input FP32 adder tree in its fixed pairwise order (`hw.numerics.tree_sum`)."""

from __future__ import annotations

from amaranth.hdl import Module, Value
from amaranth.lib import data

from hw.numerics import check_width

from .add import ADD_LATENCY, add32
from .pipeline import PipelinedUnit, Regs

__all__ = ["AdderTree", "tree32", "tree_latency"]


def tree_latency(width: int) -> int:
    """Register stages of a `width`-input tree: ADD_LATENCY per level."""
    return (width.bit_length() - 1) * ADD_LATENCY


def tree32(m: Module, regs: Regs, values: list[Value]) -> Value:
    """Sum of a power-of-two number of FP32 values: level by level, element 2j plus 2j + 1;
    `tree_latency(len(values))` stages (none for a single value)."""
    level = list(values)
    while len(level) > 1:
        level = [add32(m, regs, level[j], level[j + 1]) for j in range(0, len(level), 2)]
    return level[0]


class AdderTree(PipelinedUnit):
    """Sum of `width` FP32 values in the fixed pairwise order of `hw.numerics.tree_sum`.

    Stream in: `width` FP32 bit patterns (element 0 in the low bits); out: FP32 bits. Latency
    `tree_latency(width)` cycles (1 for width 1), one sum per cycle, full-pipeline stall.
    """

    def __init__(self, width: int):
        self.width = check_width(width)
        super().__init__(data.ArrayLayout(32, self.width), 32, max(tree_latency(self.width), 1))

    def datapath(self, m, regs, payload):
        total = tree32(m, regs, [payload[k] for k in range(self.width)])
        return regs(total, "tree_out") if self.width == 1 else total
