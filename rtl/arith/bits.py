"""Bit-level datapath pieces shared by the arithmetic units: leading-zero count, FP16 unpack,
and the single rounding of a scaled integer to FP16 (the RTL twin of `hw.sfu.round_scaled`).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed

from hw.numerics import FP16_NAN_BITS, FP32_NAN_BITS
from hw.sfu import FP16_INF_BITS

from .pipeline import Regs

__all__ = ["FP16_INF", "FP16_NAN", "FP32_INF", "FP32_NAN", "ROUND16_LATENCY", "lzc", "round16",
           "unpack16"]

#: The canonical quiet NaNs (the model's) and the infinities' magnitude bits.
FP16_NAN = FP16_NAN_BITS
FP32_NAN = FP32_NAN_BITS
FP16_INF = FP16_INF_BITS
FP32_INF = 0x7F800000
#: Register stages `round16` adds.
ROUND16_LATENCY = 2


def lzc(m: Module, value: Value, name: str = "lzc") -> Signal:
    """Number of leading zeros of `value` (its width when `value` is 0)."""
    value = Value.cast(value)
    n = len(value)
    count = Signal(range(n + 1), name=name)
    m.d.comb += count.eq(n)
    for i in range(n):  # the highest set bit is assigned last and wins
        with m.If(value[i]):
            m.d.comb += count.eq(n - 1 - i)
    return count


def unpack16(m: Module, x: Value) -> SimpleNamespace:
    """FP16 bits -> sign, m (11 bits, in [1024, 2048) for finite non-zero x), exp (signed E)
    with x = m * 2**(E - 10); subnormals are normalized. Zero reads as m = 1024, E = -15 (as
    the model has it); NaN and Inf as m = 1024 | f, E = 16."""
    x = Value.cast(x)
    e = x[10:15]
    f = x[0:10]
    sub = (e == 0) & (f != 0)
    lz = lzc(m, f, "lz16")
    mant = Signal(11, name="m11")
    exp = Signal(signed(7), name="e16")
    with m.If(sub):
        m.d.comb += [mant.eq((f << (lz + 1))[:11]), exp.eq(-15 - lz)]
    with m.Else():
        m.d.comb += [mant.eq(Cat(f, Const(1, 1))), exp.eq(e - 15)]
    return SimpleNamespace(
        sign=x[15], m=mant, exp=exp,
        nan=(e == 31) & (f != 0), inf=(e == 31) & (f == 0), zero=(e == 0) & (f == 0),
    )


def round16(m: Module, regs: Regs, sign: Value, mag: Value, scale: Value,
            overrides=()) -> Signal:
    """FP16 bits of (-1)**sign * mag * 2**scale, round to nearest even, gradual underflow,
    overflow to Inf, after `ROUND16_LATENCY` stages. `mag` is unsigned, `scale` signed.
    `overrides` is a sequence of (condition, 16-bit value); the last true one replaces the
    rounded result (register them in the same stage as the inputs)."""
    mag = Value.cast(mag).as_unsigned()
    if len(mag) < 12:  # room for 11 result bits and a guard bit
        mag = Cat(mag, Const(0, 12 - len(mag)))
    width = len(mag)
    # Stage 1: normalize so that the leading one sits at bit width - 1.
    lz = lzc(m, mag, "lz_round")
    norm = Signal(width, name="round_norm")
    m.d.comb += norm.eq(mag << lz)
    exp = Signal(signed(12), name="round_exp")  # exponent of the leading one
    m.d.comb += exp.eq(scale + (width - 1) - lz)
    s1 = regs.many(sign=sign, norm=norm, exp=exp, zero=(mag == 0),
                   **{f"ov{k}": c for k, (c, _) in enumerate(overrides)},
                   **{f"ovv{k}": Value.cast(v) for k, (_, v) in enumerate(overrides)})
    # Stage 2: shift below the normal range (up to 12 places; further is zero either way),
    # round to nearest even, pack. The encoding is monotonic in magnitude, so a carry out of
    # the significand moves into the exponent field, and from the top binade into Inf.
    below = Signal(range(13), name="round_below")
    with m.If(s1.exp >= -14):
        m.d.comb += below.eq(0)
    with m.Elif(s1.exp <= -26):
        m.d.comb += below.eq(12)
    with m.Else():
        m.d.comb += below.eq(-14 - s1.exp)
    ext = Signal(width + 12, name="round_ext")
    m.d.comb += ext.eq(Cat(Const(0, 12), s1.norm) >> below)
    q = ext[width + 1:width + 12]
    guard = ext[width]
    sticky = ext[:width] != 0
    up = guard & (sticky | q[0])
    field = Mux(s1.exp >= -14, s1.exp + 14, 0)
    packed = Signal(17, name="round_packed")
    m.d.comb += packed.eq((field[:5] << 10) + q + up)
    result = Signal(16, name="round_result")
    with m.If(s1.zero):
        m.d.comb += result.eq(s1.sign << 15)
    with m.Elif((s1.exp > 15) | (packed >= FP16_INF)):
        m.d.comb += result.eq(Cat(Const(FP16_INF, 15), s1.sign))
    with m.Else():
        m.d.comb += result.eq(Cat(packed[:15], s1.sign))
    for k in range(len(overrides)):
        with m.If(getattr(s1, f"ov{k}")):
            m.d.comb += result.eq(getattr(s1, f"ovv{k}"))
    return regs(result, "round_out")
