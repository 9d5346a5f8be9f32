"""Amaranth arithmetic units, each bit-exact with its function in `hw.numerics`.

Every unit is a `wiring.Component` with an `i` and an `o` `amaranth.lib.stream` port and a
full-pipeline stall. The datapath builders (`mul16`, `add32`, `tree32`, `round32to16`, ...)
take a `Regs` so larger blocks can put several units under one pipeline enable.
"""

from .add import ADD_LATENCY, Fp32Adder, add32
from .convert import Fp16ToFp32, Fp32ToFp16, round32to16, widen16
from .lane import DotLane, SumLane
from .mul import MUL16_LATENCY, MUL32_LATENCY, Fp16Multiplier, Fp32Multiplier, mul16, mul32
from .pipeline import PipelinedUnit, Regs
from .reduce import MaxLane, max16
from .sfu import Exp, Gelu, Reciprocal, Rsqrt
from .tree import AdderTree, tree32, tree_latency

__all__ = [
    "ADD_LATENCY",
    "MUL16_LATENCY",
    "MUL32_LATENCY",
    "AdderTree",
    "DotLane",
    "Exp",
    "Fp16Multiplier",
    "Fp16ToFp32",
    "Fp32Adder",
    "Fp32Multiplier",
    "Fp32ToFp16",
    "Gelu",
    "MaxLane",
    "PipelinedUnit",
    "Reciprocal",
    "Regs",
    "Rsqrt",
    "SumLane",
    "add32",
    "max16",
    "mul16",
    "mul32",
    "round32to16",
    "tree32",
    "tree_latency",
    "widen16",
]
