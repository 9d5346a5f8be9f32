"""The FP32 adder: round to nearest even, subnormal operands and results flushed to zero of
their sign, canonical NaN (`hw.numerics.add`)."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data

from .bits import FP32_INF, FP32_NAN, lzc
from .pipeline import PipelinedUnit, Regs

__all__ = ["ADD_LATENCY", "NEG_ZERO", "Fp32Adder", "add32"]

#: -0.0: the exact additive identity (x + -0 = x for every x, zeros included).
NEG_ZERO = 0x80000000
#: Register stages of `add32`.
ADD_LATENCY = 4


def add32(m: Module, regs: Regs, a: Value, b: Value) -> Signal:
    """FP32 sum of two FP32 bit patterns after ADD_LATENCY stages: compare and swap; align
    with guard, round and sticky bits; normalize; round and pack."""
    a, b = Value.cast(a), Value.cast(b)
    ea, eb = a[23:31], b[23:31]
    # Operands below 2**-126 read as zero: their magnitude key is 0.
    ka = Mux(ea == 0, 0, a[:31])
    kb = Mux(eb == 0, 0, b[:31])
    nan_a = (ea == 255) & (a[:23] != 0)
    nan_b = (eb == 255) & (b[:23] != 0)
    inf_a = (ea == 255) & (a[:23] == 0)
    inf_b = (eb == 255) & (b[:23] == 0)
    swap = kb > ka
    kbig = Mux(swap, kb, ka)
    ksmall = Mux(swap, ka, kb)
    sbig = Mux(swap, b[31], a[31])
    ssmall = Mux(swap, a[31], b[31])
    ebig, esmall = kbig[23:31], ksmall[23:31]
    s1 = regs.many(
        sbig=sbig, sub=sbig ^ ssmall, ebig=ebig,
        mbig=Cat(kbig[:23], ebig != 0), msmall=Cat(ksmall[:23], esmall != 0),
        d=(ebig - esmall)[:8],  # >= 0: the big operand has the larger key
        nan=nan_a | nan_b | (inf_a & inf_b & (a[31] != b[31])),
        inf=inf_a | inf_b, inf_sign=Mux(inf_a, a[31], b[31]),
        both_zero=(ka == 0) & (kb == 0), zero_sign=a[31] & b[31],
    )
    # Stage 2: align the smaller significand: 3 extra bits (guard, round, sticky), and every
    # bit shifted past them ORed into the sticky bit.
    dc = Mux(s1.d > 27, 27, s1.d)
    shifted = Signal(51, name="add_shifted")
    m.d.comb += shifted.eq(Cat(Const(0, 27), s1.msmall) >> dc)
    small_ext = Cat(shifted[24] | (shifted[:24] != 0), shifted[25:51])
    big_ext = Cat(Const(0, 3), s1.mbig)
    total = Signal(28, name="add_sum")
    m.d.comb += total.eq(Mux(s1.sub, big_ext - small_ext, big_ext + small_ext))
    s2 = regs.many(total=total, ebig=s1.ebig, sbig=s1.sbig, nan=s1.nan, inf=s1.inf,
                   inf_sign=s1.inf_sign, both_zero=s1.both_zero, zero_sign=s1.zero_sign)
    # Stage 3: normalize to a leading one at bit 26 (a carry shifts right, keeping sticky).
    carry = s2.total[27]
    lz = lzc(m, s2.total[:27], "lz_add")
    norm = Signal(27, name="add_norm")
    exp = Signal(signed(10), name="add_exp")
    with m.If(carry):
        m.d.comb += [norm.eq(Cat(s2.total[1] | s2.total[0], s2.total[2:28])),
                     exp.eq(s2.ebig + 1)]
    with m.Else():
        m.d.comb += [norm.eq(s2.total[:27] << lz), exp.eq(s2.ebig - lz)]
    s3 = regs.many(norm=norm, exp=exp, zero=s2.total == 0, sbig=s2.sbig, nan=s2.nan,
                   inf=s2.inf, inf_sign=s2.inf_sign, both_zero=s2.both_zero,
                   zero_sign=s2.zero_sign)
    # Stage 4: round to nearest even and pack; the carry of rounding runs into the exponent.
    sig = s3.norm[3:27]
    up = s3.norm[2] & (s3.norm[1] | s3.norm[0] | sig[0])
    packed = Signal(33, name="add_packed")
    m.d.comb += packed.eq((s3.exp[:8] << 23) + sig[:23] + up)
    result = Signal(32, name="add_result")
    with m.If(s3.nan):
        m.d.comb += result.eq(FP32_NAN)
    with m.Elif(s3.inf):
        m.d.comb += result.eq(Cat(Const(FP32_INF, 31), s3.inf_sign))
    with m.Elif(s3.zero):  # x + (-x) = +0; (-0) + (-0) = -0
        m.d.comb += result.eq(Cat(Const(0, 31), s3.both_zero & s3.zero_sign))
    with m.Elif(s3.exp <= 0):  # below 2**-126: flushed to zero
        m.d.comb += result.eq(Cat(Const(0, 31), s3.sbig))
    with m.Elif((s3.exp >= 255) | (packed >= FP32_INF)):
        m.d.comb += result.eq(Cat(Const(FP32_INF, 31), s3.sbig))
    with m.Else():
        m.d.comb += result.eq(Cat(packed[:31], s3.sbig))
    return regs(result, "add_out")


class Fp32Adder(PipelinedUnit):
    """FP32 + FP32 -> FP32 (`hw.numerics.add`).

    Stream in: `{a, b}` FP32 bit patterns; out: FP32 bits. Latency ADD_LATENCY cycles, one sum
    per cycle, full-pipeline stall.
    """

    def __init__(self):
        super().__init__(data.StructLayout({"a": 32, "b": 32}), 32, ADD_LATENCY)

    def datapath(self, m, regs, payload):
        return add32(m, regs, payload.a, payload.b)
