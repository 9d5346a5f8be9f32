"""Special-function units, FP16 in and FP16 out: `Exp`, `Reciprocal`, `Rsqrt`, `Gelu`.

Each performs the integer algorithm of `hw.sfu` step for step (unpack, argument reduction,
table lookup, quadratic in fixed point, one rounding); the ROM contents, fixed-point widths
and constants come from `hw.sfu`, so the tables exist once.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib.memory import Memory

from hw import sfu as model

from .bits import FP16_INF, FP16_NAN, ROUND16_LATENCY, round16, unpack16
from .pipeline import PipelinedUnit, Regs

__all__ = ["Exp", "Gelu", "Reciprocal", "Rsqrt"]

#: Stages of `_poly`: ROM read, products, first sum, second sum.
_POLY_LATENCY = 4


class _Rom:
    """A QuadTable as a ROM of packed words {c0, c1, c2, shift}, read synchronously."""

    def __init__(self, table: model.QuadTable):
        self.table = table
        self.widths = table.widths()
        self.offsets = {}
        offset = 0
        for k in ("c0", "c1", "c2", "shift"):
            self.offsets[k] = offset
            offset += self.widths[k]
        self.word_width = offset
        self.words = []
        for i in range(len(table.c0)):
            word = 0
            for k in ("c0", "c1", "c2", "shift"):
                word |= (int(getattr(table, k)[i]) & ((1 << self.widths[k]) - 1)) \
                    << self.offsets[k]
            self.words.append(word)

    def read(self, m: Module, en: Value, addr: Value) -> SimpleNamespace:
        """The fields at `addr`, one stage later (the port loads when `en` is high)."""
        memory = Memory(shape=unsigned(self.word_width), depth=len(self.words), init=self.words)
        m.submodules += memory
        port = memory.read_port(domain="sync")
        m.d.comb += [port.addr.eq(addr), port.en.eq(en)]
        return SimpleNamespace(**{
            k: port.data[self.offsets[k]:self.offsets[k] + self.widths[k]].as_signed()
            for k in ("c0", "c1", "c2", "shift")
        })


def _poly(m: Module, regs: Regs, rom: _Rom, addr: Value, r: Value, side: dict):
    """p = C0 + ((C1 r) >> R) + ((C2 ((r r) >> R)) >> R) at table index `addr`, after
    _POLY_LATENCY stages; `side` values travel alongside. Returns (p, shift, side)."""
    R = rom.table.offset_bits
    c = rom.read(m, regs.en, addr)
    s0 = regs.many(r=r, **side)  # aligned with the ROM's output
    s1 = regs.many(c0=c.c0, c2=c.c2, shift=c.shift, a1=c.c1 * s0.r, rr=(s0.r * s0.r) >> R,
                   **{k: getattr(s0, k) for k in side})
    s2 = regs.many(base=s1.c0 + (s1.a1 >> R), a2=s1.c2 * s1.rr, shift=s1.shift,
                   **{k: getattr(s1, k) for k in side})
    s3 = regs.many(p=s2.base + (s2.a2 >> R), shift=s2.shift,
                   **{k: getattr(s2, k) for k in side})
    return s3.p, s3.shift, s3


def _fixed(m: Module, mant: Value, exp: Value, frac_bits: int, width: int) -> Signal:
    """m * 2**(E - 10) with frac_bits fractional bits, truncated (`hw.sfu._fixed`)."""
    s = Signal(signed(8), name="fix_shift")
    m.d.comb += s.eq(exp - 10 + frac_bits)
    x = Signal(width, name="fixed")
    with m.If(s >= 0):
        m.d.comb += x.eq(mant << s.as_unsigned()[:5])
    with m.Else():
        m.d.comb += x.eq(mant >> (-s).as_unsigned()[:5])
    return x


class Exp(PipelinedUnit):
    """e**x on FP16 bits (`hw.numerics.exp`). Stream in/out: FP16 bits; latency 9 cycles, one
    result per cycle, full-pipeline stall."""

    def __init__(self):
        self._rom = _Rom(model.table("exp2"))
        super().__init__(16, 16, 3 + _POLY_LATENCY + ROUND16_LATENCY)

    def datapath(self, m, regs, x):
        u = unpack16(m, x)
        top = model.EXP_SATURATE_LOG2
        s1 = regs.many(sign=u.sign, m=u.m, e=Mux(u.exp >= top, top - 1, u.exp),
                       sat=(u.exp >= top) | u.inf, nan=u.nan, zero=u.zero)
        fx = _fixed(m, s1.m, s1.e, model.EXP_FRAC_BITS, model.EXP_FRAC_BITS + top)
        s2 = regs.many(X=Mux(s1.zero, 0, fx), sign=s1.sign, sat=s1.sat, nan=s1.nan)
        y = (s2.X * model.LOG2E) >> model.LOG2E_FRAC_BITS
        ys = Signal(signed(len(y) + 1), name="exp_y")
        m.d.comb += ys.eq(Mux(s2.sign, -y, y))
        s3 = regs.many(y=ys, sign=s2.sign, sat=s2.sat, nan=s2.nan)
        F = model.EXP_FRAC_BITS
        R = self._rom.table.offset_bits
        t = s3.y[:F]
        p, _, s = _poly(m, regs, self._rom, t[R:], t[:R], {
            "n": s3.y >> F, "sign": s3.sign, "sat": s3.sat, "nan": s3.nan})
        return round16(m, regs, Const(0, 1), p, s.n - model.FRAC_BITS, overrides=[
            (s.sat & ~s.sign, Const(FP16_INF, 16)),
            (s.sat & s.sign, Const(0, 16)),
            (s.nan, Const(FP16_NAN, 16)),
        ])


class Reciprocal(PipelinedUnit):
    """1/x on FP16 bits (`hw.numerics.reciprocal`). Stream in/out: FP16 bits; latency 6
    cycles, one result per cycle, full-pipeline stall."""

    def __init__(self):
        self._rom = _Rom(model.table("reciprocal"))
        super().__init__(16, 16, _POLY_LATENCY + ROUND16_LATENCY)

    def datapath(self, m, regs, x):
        u = unpack16(m, x)
        R = self._rom.table.offset_bits
        p, _, s = _poly(m, regs, self._rom, u.m[R:10], u.m[:R], {
            "sign": u.sign, "exp": u.exp, "nan": u.nan, "inf": u.inf, "zero": u.zero})
        return round16(m, regs, s.sign, p, -s.exp - 1 - model.FRAC_BITS, overrides=[
            (s.zero, Cat(Const(FP16_INF, 15), s.sign)),
            (s.inf, Cat(Const(0, 15), s.sign)),
            (s.nan, Const(FP16_NAN, 16)),
        ])


class Rsqrt(PipelinedUnit):
    """1/sqrt(x) on FP16 bits (`hw.numerics.rsqrt`). Stream in/out: FP16 bits; latency 6
    cycles, one result per cycle, full-pipeline stall."""

    def __init__(self):
        self._rom = _Rom(model.table("rsqrt"))
        super().__init__(16, 16, _POLY_LATENCY + ROUND16_LATENCY)

    def datapath(self, m, regs, x):
        u = unpack16(m, x)
        R = self._rom.table.offset_bits
        # The exponent's parity picks the half table (the index MSB).
        p, _, s = _poly(m, regs, self._rom, Cat(u.m[R:10], u.exp[0]), u.m[:R], {
            "sign": u.sign, "exp": u.exp, "nan": u.nan, "inf": u.inf, "zero": u.zero})
        return round16(m, regs, Const(0, 1), p, -(s.exp >> 1) - 1 - model.FRAC_BITS, overrides=[
            (s.zero, Cat(Const(FP16_INF, 15), s.sign)),
            (s.inf, Const(0, 16)),
            (s.sign & ~s.zero, Const(FP16_NAN, 16)),
            (s.nan, Const(FP16_NAN, 16)),
        ])


class Gelu(PipelinedUnit):
    """GPT-2's tanh-form GELU on FP16 bits (`hw.numerics.gelu`). Stream in/out: FP16 bits;
    latency 8 cycles, one result per cycle, full-pipeline stall."""

    def __init__(self):
        self._rom = _Rom(model.table("gelu"))
        super().__init__(16, 16, 1 + _POLY_LATENCY + 1 + ROUND16_LATENCY)

    def datapath(self, m, regs, x):
        u = unpack16(m, x)
        top = model.GELU_SATURATE_LOG2
        F = model.GELU_FRAC_BITS
        s1 = regs.many(x=x, sign=u.sign, m=u.m, exp=u.exp, e=Mux(u.exp >= top, top - 1, u.exp),
                       sat=(u.exp >= top) | u.inf, nan=u.nan, zero=u.zero)
        fx = _fixed(m, s1.m, s1.e, F, F + top)
        fx = Mux(s1.zero, 0, fx)
        offset = Signal(F + top + 1, name="gelu_u")  # x + 8 in [0, 16)
        m.d.comb += offset.eq(Mux(s1.sign, (8 << F) - fx, (8 << F) + fx))
        R = self._rom.table.offset_bits
        side = {k: getattr(s1, k) for k in ("x", "sign", "m", "exp", "sat", "nan", "zero")}
        p, shift, s = _poly(m, regs, self._rom, offset[R:], offset[:R], side)
        s5 = regs.many(mag=s.m * p.as_unsigned(),
                       scale=s.exp - 10 - model.FRAC_BITS - shift,
                       **{k: getattr(s, k) for k in ("x", "sign", "sat", "nan", "zero")})
        return round16(m, regs, s5.sign, s5.mag, s5.scale, overrides=[
            (s5.sat & ~s5.sign, s5.x),
            (s5.sat & s5.sign, Const(0x8000, 16)),
            (s5.zero, s5.x),
            (s5.nan, Const(FP16_NAN, 16)),
        ])
