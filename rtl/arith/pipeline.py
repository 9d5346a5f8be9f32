"""Pipelines with a full-pipeline stall: every register of a unit advances on one enable.

A unit built on `PipelinedUnit` accepts a beat whenever its last stage is empty or is being
taken, so `i.ready` follows `o.ready` combinationally and a stalled output freezes every stage
(bubbles included). Throughput is one beat per cycle when `o.ready` stays high.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PipelinedUnit", "Regs"]


class Regs:
    """Makes pipeline registers that load when `en` is high.

    Datapath builders call it at each stage boundary; every value that crosses a boundary
    goes through it, so all paths of a stage have the same depth.
    """

    def __init__(self, m: Module, en: Value, prefix: str = "st"):
        self.m = m
        self.en = en
        self.prefix = prefix
        self._count = 0

    def __call__(self, value, name: str | None = None) -> Signal:
        value = Value.cast(value)
        self._count += 1
        reg = Signal(value.shape(), name=f"{self.prefix}_{name or 'r'}_{self._count}")
        with self.m.If(self.en):
            self.m.d.sync += reg.eq(value)
        return reg

    def many(self, **values) -> SimpleNamespace:
        """Register several named values at once."""
        return SimpleNamespace(**{k: self(v, k) for k, v in values.items()})


class PipelinedUnit(wiring.Component):
    """A stream-in, stream-out unit of fixed `latency` with a full-pipeline stall.

    Subclasses implement `datapath(m, regs, payload)`, returning the output payload after
    exactly `latency` register stages made with `regs`.
    """

    def __init__(self, in_shape, out_shape, latency: int):
        if latency < 1:
            raise ValueError(f"latency must be at least 1, not {latency}")
        self.latency = latency
        super().__init__({
            "i": In(stream.Signature(in_shape)),
            "o": Out(stream.Signature(out_shape)),
        })

    def datapath(self, m: Module, regs: Regs, payload) -> Value:
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        out = self.datapath(m, Regs(m, en), self.i.payload)
        valid = Signal(self.latency)
        m.d.comb += en.eq(~valid[-1] | self.o.ready)
        with m.If(en):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))
        m.d.comb += [
            self.i.ready.eq(en),
            self.o.valid.eq(valid[-1]),
            self.o.payload.eq(out),
        ]
        return m
