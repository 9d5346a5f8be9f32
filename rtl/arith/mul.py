"""Multipliers: FP16 x FP16 -> FP32 exact (`hw.numerics.mul`) and FP32 x FP32 -> FP32 rounded
to nearest even with flush-to-zero (`hw.numerics.mul32`)."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data

from .bits import FP32_INF, FP32_NAN, lzc
from .pipeline import PipelinedUnit, Regs

__all__ = ["MUL16_LATENCY", "MUL32_LATENCY", "Fp16Multiplier", "Fp32Multiplier", "mul16",
           "mul32"]

#: Register stages of `mul16` and `mul32`.
MUL16_LATENCY = 2
MUL32_LATENCY = 2


def mul16(m: Module, regs: Regs, a: Value, b: Value) -> Signal:
    """Exact FP32 product of two FP16 bit patterns, after MUL16_LATENCY stages."""
    a, b = Value.cast(a), Value.cast(b)

    def fields(x):
        e, f = x[10:15], x[0:10]
        return SimpleNamespace(
            m=Mux(e == 0, f, Cat(f, Const(1, 1))),  # subnormals keep a 0 hidden bit
            e=Mux(e == 0, 1, e),
            nan=(e == 31) & (f != 0), inf=(e == 31) & (f == 0), zero=(e == 0) & (f == 0))

    fa, fb = fields(a), fields(b)
    s1 = regs.many(
        p=fa.m * fb.m,  # 22 bits: the DSP's product
        esum=fa.e + fb.e,
        sign=a[15] ^ b[15],
        nan=fa.nan | fb.nan | (fa.inf & fb.zero) | (fa.zero & fb.inf),
        inf=fa.inf | fb.inf,
    )
    # value = p * 2**(esum - 50); with p's leading one at bit 21 - lz the FP32 biased exponent
    # is (21 - lz) + esum - 50 + 127, between 79 and 158: always normal, never rounded.
    lz = lzc(m, s1.p, "lz_mul16")
    norm = Signal(22, name="mul16_norm")
    m.d.comb += norm.eq(s1.p << lz)
    exp = Signal(8, name="mul16_exp")
    m.d.comb += exp.eq(s1.esum + 98 - lz)
    result = Signal(32, name="mul16_result")
    with m.If(s1.nan):
        m.d.comb += result.eq(FP32_NAN)
    with m.Elif(s1.inf):
        m.d.comb += result.eq(Cat(Const(FP32_INF, 31), s1.sign))
    with m.Elif(s1.p == 0):
        m.d.comb += result.eq(Cat(Const(0, 31), s1.sign))
    with m.Else():
        m.d.comb += result.eq(Cat(Const(0, 2), norm[:21], exp, s1.sign))
    return regs(result, "mul16_out")


def mul32(m: Module, regs: Regs, a: Value, b: Value) -> Signal:
    """FP32 x FP32 rounded to nearest even, flush-to-zero, after MUL32_LATENCY stages."""
    a, b = Value.cast(a), Value.cast(b)

    def fields(x):
        e, f = x[23:31], x[0:23]
        return SimpleNamespace(m=Cat(f, Const(1, 1)), e=e, zero=e == 0,
                            nan=(e == 255) & (f != 0), inf=(e == 255) & (f == 0))

    fa, fb = fields(a), fields(b)
    s1 = regs.many(
        p=fa.m * fb.m,  # 48 bits, leading one at bit 46 or 47
        esum=fa.e + fb.e,
        sign=a[31] ^ b[31],
        nan=fa.nan | fb.nan | (fa.inf & fb.zero) | (fa.zero & fb.inf),
        inf=fa.inf | fb.inf,
        zero=fa.zero | fb.zero,
    )
    top = s1.p[47]
    sig = Mux(top, s1.p[24:48], s1.p[23:47])
    guard = Mux(top, s1.p[23], s1.p[22])
    sticky = Mux(top, s1.p[:23] != 0, s1.p[:22] != 0)
    exp = Signal(signed(11), name="mul32_exp")
    m.d.comb += exp.eq(s1.esum - 127 + top)
    up = guard & (sticky | sig[0])
    packed = Signal(33, name="mul32_packed")
    m.d.comb += packed.eq((exp[:8] << 23) + sig[:23] + up)
    result = Signal(32, name="mul32_result")
    with m.If(s1.nan):
        m.d.comb += result.eq(FP32_NAN)
    with m.Elif(s1.inf):
        m.d.comb += result.eq(Cat(Const(FP32_INF, 31), s1.sign))
    with m.Elif(s1.zero | (exp <= 0)):  # an exact product below 2**-126 flushes to zero
        m.d.comb += result.eq(Cat(Const(0, 31), s1.sign))
    with m.Elif((exp >= 255) | (packed >= FP32_INF)):
        m.d.comb += result.eq(Cat(Const(FP32_INF, 31), s1.sign))
    with m.Else():
        m.d.comb += result.eq(Cat(packed[:31], s1.sign))
    return regs(result, "mul32_out")


class Fp16Multiplier(PipelinedUnit):
    """FP16 x FP16 -> exact FP32 product (`hw.numerics.mul`).

    Stream in: `{a, b}` FP16 bit patterns; out: FP32 bits. Latency MUL16_LATENCY cycles, one
    product per cycle, full-pipeline stall.
    """

    def __init__(self):
        super().__init__(data.StructLayout({"a": 16, "b": 16}), 32, MUL16_LATENCY)

    def datapath(self, m, regs, payload):
        return mul16(m, regs, payload.a, payload.b)


class Fp32Multiplier(PipelinedUnit):
    """FP32 x FP32 -> FP32, nearest even, flush-to-zero (`hw.numerics.mul32`).

    Stream in: `{a, b}` FP32 bit patterns; out: FP32 bits. Latency MUL32_LATENCY cycles, one
    product per cycle, full-pipeline stall.
    """

    def __init__(self):
        super().__init__(data.StructLayout({"a": 32, "b": 32}), 32, MUL32_LATENCY)

    def datapath(self, m, regs, payload):
        return mul32(m, regs, payload.a, payload.b)
