"""`MaxLane`: the running maximum of FP16 vectors, `width` elements per beat
(`hw.numerics.reduce_max`)."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.numerics import check_width

from .bits import FP16_NAN
from .pipeline import Regs

__all__ = ["MaxLane", "max16"]


def _key(x: Value) -> Value:
    """An unsigned key ordered like the FP16 values: -0 below +0, the canonical NaN on top."""
    return Mux(x[15], Cat(~x[:15], Const(0, 1)), Cat(x[:15], Const(1, 1)))


def max16(a: Value, b: Value) -> Value:
    """The larger of two FP16 bit patterns already carrying canonical NaNs (combinational)."""
    return Mux(_key(a) >= _key(b), a, b)


class MaxLane(wiring.Component):
    """Row maxima of FP16 vectors (`hw.numerics.reduce_max`).

    Stream in: `{data: width x FP16, first, last}`, a row's beats in sequence from its `first`
    to its `last` beat; out: one FP16 maximum per row. NaNs become the canonical NaN, which
    orders above +Inf, so any NaN wins. Latency 2 + log2(width) cycles from a row's last beat,
    one beat per cycle, full-pipeline stall.
    """

    def __init__(self, width: int):
        self.width = check_width(width)
        self._layout = data.StructLayout({
            "data": data.ArrayLayout(16, self.width), "first": 1, "last": 1,
        })
        super().__init__({
            "i": In(stream.Signature(self._layout)),
            "o": Out(stream.Signature(16)),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        regs = Regs(m, en, "max")
        beat = self._layout(regs(self.i.payload, "in"))
        level = []
        for k in range(self.width):
            x = beat.data[k]
            level.append(Mux((x[10:15] == 31) & (x[:10] != 0), FP16_NAN, x))
        while len(level) > 1:
            level = [regs(max16(level[j], level[j + 1]), "level")
                     for j in range(0, len(level), 2)]
        top = level[0]
        depth = 1 + (self.width.bit_length() - 1)
        fv, ff, fl = Signal(depth), Signal(depth), Signal(depth)
        with m.If(en):
            m.d.sync += [
                fv.eq(Cat(self.i.valid, fv[:-1])),
                ff.eq(Cat(self.i.payload.first, ff[:-1])),
                fl.eq(Cat(self.i.payload.last, fl[:-1])),
            ]
        # The running maximum: a one-cycle loop, so rows need no interleaving.
        acc = Signal(16)
        new = Signal(16)
        m.d.comb += new.eq(Mux(ff[-1], top, max16(acc, top)))
        out_valid = Signal()
        out = Signal(16)
        with m.If(en):
            m.d.sync += [out_valid.eq(fv[-1] & fl[-1]), out.eq(new)]
            with m.If(fv[-1]):
                m.d.sync += acc.eq(new)
        m.d.comb += [
            en.eq(~out_valid | self.o.ready),
            self.i.ready.eq(en),
            self.o.valid.eq(out_valid),
            self.o.payload.eq(out),
        ]
        return m
