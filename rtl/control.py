"""`ControlRegs`: the kernel's AXI4-Lite subordinate, generated from the register map in
`hw.regmap` (the same description the host driver reads).

XRT `ap_ctrl_hs` behaviour: writing 1 to ap_start starts a run when the kernel is idle (ap_start
reads 1 until the kernel has taken it); ap_done and ap_ready rise when the run ends and clear when
the control word is read; ap_idle is high outside runs; with auto_restart set, the kernel starts
again after each run. Interrupt status bits rise on done / ready when enabled in IER and toggle
when written with 1; `interrupt` is their OR gated by GIE. Arguments are read-write words
(64-bit pointers as two words, low first); status registers read their inputs.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.regmap import CONTROL_BITS, RegMap

from .axi import axil_signature

__all__ = ["ControlRegs"]


class ControlRegs(wiring.Component):
    """Ports: `bus` (AXI4-Lite, subordinate side), one output per argument (by name), one input
    per status register (by name), and the run handshake: `start` (a pulse), `done` (a pulse in),
    `idle` (in), `interrupt` (out)."""

    def __init__(self, regmap: RegMap):
        self.regmap = regmap
        members = {
            "bus": In(axil_signature(regmap.addr_bits)),
            "start": Out(1),
            "done": In(1),
            "idle": In(1),
            "interrupt": Out(1),
        }
        for reg in regmap:
            if reg.kind == "arg":
                members[f"arg_{reg.name}"] = Out(reg.width)
            elif reg.kind == "status":
                members[f"status_{reg.name}"] = In(reg.width)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        bits = CONTROL_BITS
        ap_start, ap_done, ap_ready, auto = Signal(), Signal(), Signal(), Signal()
        gie = Signal()
        ier = Signal(2)
        isr = Signal(2)

        # the run handshake
        m.d.comb += self.start.eq(ap_start & self.idle)
        with m.If(self.start & ~auto):
            m.d.sync += ap_start.eq(0)
        with m.If(self.done):
            m.d.sync += [ap_done.eq(1), ap_ready.eq(1)]
            with m.If(ier[0]):
                m.d.sync += isr[0].eq(1)
            with m.If(ier[1]):
                m.d.sync += isr[1].eq(1)
        m.d.comb += self.interrupt.eq(gie & (isr != 0))

        # writes: address and data together
        bvalid = Signal()
        take_w = bus.awvalid & bus.wvalid & ~bvalid
        m.d.comb += [bus.awready.eq(take_w), bus.wready.eq(take_w), bus.bvalid.eq(bvalid),
                     bus.bresp.eq(0)]
        with m.If(take_w):
            m.d.sync += bvalid.eq(1)
        with m.If(bvalid & bus.bready):
            m.d.sync += bvalid.eq(0)
        waddr = bus.awaddr
        wdata = bus.wdata
        storage = {}
        for reg in self.regmap:
            if reg.kind == "arg":
                store = getattr(self, f"arg_{reg.name}")
                storage[reg.name] = store
                for word in range(reg.words):
                    with m.If(take_w & (waddr == reg.offset + 4 * word)):
                        m.d.sync += store[32 * word:32 * word + 32].eq(wdata)
        with m.If(take_w & (waddr == self.regmap["control"].offset)):
            with m.If(wdata[bits["ap_start"]]):
                m.d.sync += ap_start.eq(1)
            m.d.sync += auto.eq(wdata[bits["auto_restart"]])
        with m.If(take_w & (waddr == self.regmap["gie"].offset)):
            m.d.sync += gie.eq(wdata[0])
        with m.If(take_w & (waddr == self.regmap["ier"].offset)):
            m.d.sync += ier.eq(wdata[:2])
        with m.If(take_w & (waddr == self.regmap["isr"].offset)):
            m.d.sync += isr.eq(isr ^ wdata[:2])

        # reads
        rvalid = Signal()
        rdata = Signal(32)
        take_r = bus.arvalid & ~rvalid
        m.d.comb += [bus.arready.eq(take_r), bus.rvalid.eq(rvalid), bus.rdata.eq(rdata),
                     bus.rresp.eq(0)]
        with m.If(rvalid & bus.rready):
            m.d.sync += rvalid.eq(0)
        raddr = bus.araddr
        with m.If(take_r):
            m.d.sync += [rvalid.eq(1), rdata.eq(0)]
            with m.Switch(raddr):
                with m.Case(self.regmap["control"].offset):
                    word = Signal(32)
                    m.d.comb += [word[bits["ap_start"]].eq(ap_start),
                                 word[bits["ap_done"]].eq(ap_done),
                                 word[bits["ap_idle"]].eq(self.idle),
                                 word[bits["ap_ready"]].eq(ap_ready),
                                 word[bits["auto_restart"]].eq(auto)]
                    m.d.sync += rdata.eq(word)
                    with m.If(~self.done):  # a done in this very cycle is not lost
                        m.d.sync += [ap_done.eq(0), ap_ready.eq(0)]
                with m.Case(self.regmap["gie"].offset):
                    m.d.sync += rdata.eq(gie)
                with m.Case(self.regmap["ier"].offset):
                    m.d.sync += rdata.eq(ier)
                with m.Case(self.regmap["isr"].offset):
                    m.d.sync += rdata.eq(isr)
                for reg in self.regmap:
                    if reg.kind == "control":
                        continue
                    source = (storage[reg.name] if reg.kind == "arg"
                              else getattr(self, f"status_{reg.name}"))
                    for word_ in range(reg.words):
                        with m.Case(reg.offset + 4 * word_):
                            m.d.sync += rdata.eq(source[32 * word_:32 * word_ + 32])
        return m
