"""Format converters: FP32 -> FP16 rounding (`hw.numerics.round_fp16`) and FP16 -> FP32
widening (`hw.numerics.widen`)."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal, Value

from .bits import FP16_INF, FP16_NAN, FP32_INF, FP32_NAN, ROUND16_LATENCY, round16, unpack16
from .pipeline import PipelinedUnit, Regs

__all__ = ["ROUND_LATENCY", "WIDEN_LATENCY", "Fp16ToFp32", "Fp32ToFp16", "round32to16",
           "widen16"]

#: Register stages of `round32to16` and `widen16`.
ROUND_LATENCY = ROUND16_LATENCY
WIDEN_LATENCY = 1


def round32to16(m: Module, regs: Regs, x: Value) -> Signal:
    """FP16 bits of an FP32 value: flush FP32 subnormals, round to nearest even onto FP16
    (subnormals included), overflow to Inf; ROUND_LATENCY stages."""
    x = Value.cast(x)
    e, f, sign = x[23:31], x[:23], x[31]
    return round16(m, regs, sign, Cat(f, Const(1, 1)), e - 150, overrides=[
        (e == 0, Cat(Const(0, 15), sign)),
        ((e == 255) & (f == 0), Cat(Const(FP16_INF, 15), sign)),
        ((e == 255) & (f != 0), Const(FP16_NAN, 16)),
    ])


def widen16(m: Module, regs: Regs, x: Value) -> Signal:
    """FP32 bits of an FP16 value, exact; WIDEN_LATENCY stages."""
    u = unpack16(m, x)
    result = Signal(32, name="widen_result")
    with m.If(u.nan):
        m.d.comb += result.eq(FP32_NAN)
    with m.Elif(u.inf):
        m.d.comb += result.eq(Cat(Const(FP32_INF, 31), u.sign))
    with m.Elif(u.zero):
        m.d.comb += result.eq(Cat(Const(0, 31), u.sign))
    with m.Else():
        m.d.comb += result.eq(Cat(Const(0, 13), u.m[:10], (u.exp + 127)[:8], u.sign))
    return regs(result, "widen_out")


class Fp32ToFp16(PipelinedUnit):
    """FP32 -> FP16, round to nearest even (`hw.numerics.round_fp16`).

    Stream in: FP32 bits; out: FP16 bits. Latency ROUND_LATENCY cycles, one value per cycle,
    full-pipeline stall.
    """

    def __init__(self):
        super().__init__(32, 16, ROUND_LATENCY)

    def datapath(self, m, regs, payload):
        return round32to16(m, regs, payload)


class Fp16ToFp32(PipelinedUnit):
    """FP16 -> FP32, exact (`hw.numerics.widen`).

    Stream in: FP16 bits; out: FP32 bits. Latency WIDEN_LATENCY cycle, one value per cycle,
    full-pipeline stall.
    """

    def __init__(self):
        super().__init__(16, 32, WIDEN_LATENCY)

    def datapath(self, m, regs, payload):
        return widen16(m, regs, payload)
