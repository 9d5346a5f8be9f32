"""`RangeScoreboard`: vector-buffer hazards between instructions in flight, as `hw.perf` times
them.

Every issued instruction that touches the vector buffer holds an entry: up to `reads` read
ranges and one write range, in blocks [lo, hi). An instruction may issue when none of its read
ranges overlaps a pending write (RAW) and its write range overlaps no pending write (WAW) and
no pending read (WAR). The engine that runs it releases the reads when it has read its last
beat and the write when its last result is in the buffer; the entry is free once both are.
Releases take effect the next cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RangeScoreboard", "range_layout"]


def range_layout(block_bits: int) -> data.StructLayout:
    return data.StructLayout({"valid": 1, "lo": block_bits + 1, "hi": block_bits + 1})


class RangeScoreboard(wiring.Component):
    def __init__(self, *, entries: int, block_bits: int, reads: int = 3):
        if entries < 1 or entries & (entries - 1):
            raise ValueError(f"entries must be a power of two, not {entries}")
        self.entries = entries
        self.reads = reads
        rng = range_layout(block_bits)
        super().__init__({
            "new_reads": In(rng).array(reads),
            "new_write": In(rng),
            "conflict": Out(1),  #: the new ranges overlap an entry's (combinational)
            "full": Out(1),  #: no entry is free
            "entry": Out(range(entries)),  #: the entry `alloc` takes
            "alloc": In(1),  #: take `entry` for the new ranges
            "release_reads": In(entries),  #: one bit per entry
            "release_write": In(entries),
            "empty": Out(1),
        })
        self._rng = rng

    def elaborate(self, platform):
        m = Module()

        def overlap(a, b):
            return (a.lo < b.hi) & (b.lo < a.hi)

        rd = [[Signal(self._rng, name=f"e{e}_r{i}") for i in range(self.reads)]
              for e in range(self.entries)]
        wr = [Signal(self._rng, name=f"e{e}_w") for e in range(self.entries)]
        busy = [Signal(name=f"e{e}_busy") for e in range(self.entries)]
        clashes = []
        for e in range(self.entries):
            raw = [nr.valid & wr[e].valid & overlap(nr, wr[e]) for nr in self.new_reads]
            waw = self.new_write.valid & wr[e].valid & overlap(self.new_write, wr[e])
            war = [self.new_write.valid & r.valid & overlap(self.new_write, r) for r in rd[e]]
            clash = Signal(name=f"e{e}_clash")
            m.d.comb += clash.eq(busy[e] & (waw | _any(raw) | _any(war)))
            clashes.append(clash)
            m.d.comb += busy[e].eq(wr[e].valid | _any([r.valid for r in rd[e]]))
        m.d.comb += self.conflict.eq(_any(clashes))
        m.d.comb += [self.full.eq(1), self.empty.eq(~_any(busy))]
        for e in reversed(range(self.entries)):
            with m.If(~busy[e]):
                m.d.comb += [self.full.eq(0), self.entry.eq(e)]
        for e in range(self.entries):
            with m.If(self.release_reads[e]):
                m.d.sync += [r.valid.eq(0) for r in rd[e]]
            with m.If(self.release_write[e]):
                m.d.sync += wr[e].valid.eq(0)
            with m.If(self.alloc & (self.entry == e)):
                m.d.sync += [r.eq(n) for r, n in zip(rd[e], self.new_reads, strict=True)]
                m.d.sync += wr[e].eq(self.new_write)
        return m


def _any(values):
    out = 0
    for v in values:
        out = out | v
    return out
