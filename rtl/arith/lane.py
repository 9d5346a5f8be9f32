"""Accumulating lanes: `SumLane` (FP32 vectors, `hw.numerics.reduce_sum`) and `DotLane` (FP16
vector pairs, `hw.numerics.dot`).

A lane takes one beat of `width` elements per cycle, reduces it to one FP32 beat sum (products
and adder tree), and adds that sum to its row's partial sum in an accumulator loop: the FP32
adder, whose ADD_LATENCY pipeline registers hold the partial sums of up to
`rows_in_flight = ADD_LATENCY` rows, each labelled with the row tag its beats carry. Each
cycle the loop's oldest entry comes round:

- a partial sum meets the waiting beat if that beat has the same tag and is not a `first`
  beat (and leaves as the row's result if the beat is marked `last`); otherwise it goes round
  again unchanged (plus -0);
- a free slot takes a waiting `first` beat (plus -0), which opens a new row.

So a row's result is ((t0 + t1) + t2) + ... over its beat sums t, whatever the latencies and
stalls. Contract for the producer: mark each row's first and last beat (one beat may be both);
give every beat its row's tag; rows open at the same time (first beat sent, last not yet)
have distinct tags, so at most `rows_in_flight` are open. Beats of open rows may come in any
order; a beat waits until its row's partial comes round. A single open row therefore runs at
one beat per `rows_in_flight` cycles. Full rate, one beat per cycle, needs the producer to
cycle through `rows_in_flight` turns: each turn sends its row's next beat, and once a row has
sent its last beat, its turn opens the next row (e.g. rows 0-3 beat by beat, then rows 4-7).
Results leave in the order of the rows' last beats.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.numerics import check_width

from .add import ADD_LATENCY, NEG_ZERO, add32
from .mul import MUL16_LATENCY, mul16
from .pipeline import Regs
from .tree import tree32, tree_latency

__all__ = ["DotLane", "SumLane"]


class _Lane(wiring.Component):
    rows_in_flight = ADD_LATENCY

    def __init__(self, width: int, in_layout: data.StructLayout, front_latency: int):
        self.width = check_width(width)
        self._in_layout = in_layout
        self.front_latency = front_latency
        super().__init__({
            "i": In(stream.Signature(in_layout)),
            "o": Out(stream.Signature(32)),
        })

    def front(self, m: Module, regs: Regs, beat) -> Signal:
        """FP32 sum of one (registered) input beat after `front_latency` stages."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        f_en = Signal()  # the front (input register, products, tree) advances
        r_en = Signal()  # the accumulator loop advances
        fregs = Regs(m, f_en, "front")
        beat = self._in_layout(fregs(self.i.payload, "in"))
        beat_sum = self.front(m, fregs, beat)
        depth = 1 + self.front_latency
        fv, ff, fl = Signal(depth), Signal(depth), Signal(depth)  # valid, first, last per stage
        with m.If(f_en):
            m.d.sync += [
                fv.eq(Cat(self.i.valid, fv[:-1])),
                ff.eq(Cat(self.i.payload.first, ff[:-1])),
                fl.eq(Cat(self.i.payload.last, fl[:-1])),
            ]
        f_valid, f_first, f_last = fv[-1], ff[-1], fl[-1]
        f_row = beat.row
        for _ in range(self.front_latency):
            f_row = fregs(f_row, "row")

        a_in, b_in = Signal(32), Signal(32)
        acc = add32(m, Regs(m, r_en, "ring"), a_in, b_in)
        rv, rl = Signal(ADD_LATENCY), Signal(ADD_LATENCY)  # valid, last per loop stage
        rows = [Signal(range(self.rows_in_flight), name=f"ring_row{k}")
                for k in range(ADD_LATENCY)]
        x_valid, x_last, x_row = rv[-1], rl[-1], rows[-1]
        partial = x_valid & ~x_last  # a row's partial sum comes round
        take = f_valid & Mux(partial, ~f_first & (f_row == x_row), f_first)
        m.d.comb += [
            r_en.eq(~(x_valid & x_last) | self.o.ready),
            a_in.eq(Mux(take, beat_sum, acc)),
            b_in.eq(Mux(partial & take, acc, NEG_ZERO)),
            f_en.eq(~f_valid | (r_en & take)),
            self.i.ready.eq(f_en),
            self.o.valid.eq(x_valid & x_last),
            self.o.payload.eq(acc),
        ]
        with m.If(r_en):
            m.d.sync += [
                rv.eq(Cat(take | partial, rv[:-1])),
                rl.eq(Cat(take & f_last, rl[:-1])),
                rows[0].eq(Mux(take, f_row, x_row)),
            ]
            m.d.sync += [rows[k].eq(rows[k - 1]) for k in range(1, ADD_LATENCY)]
        return m


class SumLane(_Lane):
    """Row sums of FP32 vectors, `width` elements per beat (`hw.numerics.reduce_sum`).

    Stream in: `{data: width x FP32, first, last, row}`; out: one FP32 sum per row. Front latency
    1 + tree_latency(width) cycles, then the accumulator loop (see the module doc).
    """

    def __init__(self, width: int):
        width = check_width(width)
        super().__init__(width, data.StructLayout({
            "data": data.ArrayLayout(32, width), "first": 1, "last": 1,
            "row": range(self.rows_in_flight),
        }), tree_latency(width))

    def front(self, m, regs, beat):
        return tree32(m, regs, [beat.data[k] for k in range(self.width)])


class DotLane(_Lane):
    """Dot products of FP16 vector pairs, `width` products per beat (`hw.numerics.dot`).

    Stream in: `{a: width x FP16, b: width x FP16, first, last, row}`; out: one FP32 dot product per
    row. `width` exact FP16 multipliers feed the adder tree. Front latency 1 + MUL16_LATENCY +
    tree_latency(width) cycles, then the accumulator loop (see the module doc).
    """

    def __init__(self, width: int):
        width = check_width(width)
        super().__init__(width, data.StructLayout({
            "a": data.ArrayLayout(16, width), "b": data.ArrayLayout(16, width),
            "first": 1, "last": 1, "row": range(self.rows_in_flight),
        }), MUL16_LATENCY + tree_latency(width))

    def front(self, m, regs, beat):
        products = [mul16(m, regs, beat.a[k], beat.b[k]) for k in range(self.width)]
        return tree32(m, regs, products)
