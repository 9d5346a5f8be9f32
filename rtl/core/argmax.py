"""`ArgMax`: the first index of the largest FP16 value of a vector, as `numpy.argmax` of the
values widened to FP32 finds it (the ARGMAX instruction).

Order: NaN above everything (so the first NaN wins), -0 equal to +0, otherwise the values'
order; ties keep the earliest index. Stream in: `{data: width x FP16, first, last}`, a vector's
beats in order; out: `{index, value}` per vector (the index counted from the vector's start, the
value's own bits). One beat per cycle; latency 2 cycles from the last beat.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.numerics import check_width

__all__ = ["ArgMax"]


def _key(m: Module, x) -> Signal:
    """17-bit order key: NaN on top, -0 as +0, then the FP16 order."""
    key = Signal(17)
    nan = (x[10:15] == 31) & (x[:10] != 0)
    mag = x[:15]
    neg = x[15] & (mag != 0)
    m.d.comb += key.eq(Mux(nan, 1 << 16, Mux(neg, Cat(~mag, Const(0, 2)),
                                              Cat(mag, Const(1, 1), Const(0, 1)))))
    return key


class ArgMax(wiring.Component):
    def __init__(self, width: int, index_bits: int = 24):
        self.width = check_width(width)
        self.index_bits = index_bits
        self._in = data.StructLayout({"data": data.ArrayLayout(16, self.width), "first": 1,
                                      "last": 1})
        super().__init__({
            "i": In(stream.Signature(self._in)),
            "o": Out(stream.Signature(data.StructLayout({"index": index_bits, "value": 16}))),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        # stage 1: the beat's best (key, position, value), ties to the lower position
        level = [(_key(m, self.i.payload.data[k]), Const(k, range(self.width)),
                  self.i.payload.data[k]) for k in range(self.width)]
        while len(level) > 1:
            nxt = []
            for j in range(0, len(level), 2):
                (ka, ia, va), (kb, ib, vb) = level[j], level[j + 1]
                take_b = kb > ka
                nxt.append((Mux(take_b, kb, ka), Mux(take_b, ib, ia), Mux(take_b, vb, va)))
            level = nxt
        bkey, bpos, bval = level[0]
        s_valid, s_first, s_last = Signal(), Signal(), Signal()
        s_key, s_val = Signal(17), Signal(16)
        s_pos = Signal(self.index_bits)
        beat = Signal(self.index_bits)  # position of the incoming beat's first element
        with m.If(en):
            m.d.sync += [s_valid.eq(self.i.valid), s_first.eq(self.i.payload.first),
                         s_last.eq(self.i.payload.last), s_key.eq(bkey), s_val.eq(bval),
                         s_pos.eq(Mux(self.i.payload.first, 0, beat) + bpos)]
            with m.If(self.i.valid):
                m.d.sync += beat.eq(Mux(self.i.payload.first, self.width, beat + self.width))
        # stage 2: the running best of the vector (a one-cycle loop)
        best_key, best_val = Signal(17), Signal(16)
        best_pos = Signal(self.index_bits)
        new_key, new_val = Signal(17), Signal(16)
        new_pos = Signal(self.index_bits)
        keep = ~s_first & ~(s_key > best_key)
        m.d.comb += [new_key.eq(Mux(keep, best_key, s_key)), new_val.eq(Mux(keep, best_val, s_val)),
                     new_pos.eq(Mux(keep, best_pos, s_pos))]
        out_valid = Signal()
        with m.If(en):
            m.d.sync += out_valid.eq(s_valid & s_last)
            with m.If(s_valid):
                m.d.sync += [best_key.eq(new_key), best_val.eq(new_val), best_pos.eq(new_pos)]
            m.d.sync += [self.o.payload.index.eq(new_pos), self.o.payload.value.eq(new_val)]
        m.d.comb += [en.eq(~out_valid | self.o.ready), self.i.ready.eq(en),
                     self.o.valid.eq(out_valid)]
        return m
