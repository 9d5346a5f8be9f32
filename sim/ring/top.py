"""The `Ring` build under test: its parameters and its simulation build.

One router of the TINY config as the core builds it (the controller's micro-op layout and
vector-buffer block width). The testbench plays the controller (micro-ops in), the vector
buffer (a read answers one cycle after its request) and the two neighbours on the ring: an
AXI4-Stream source for the link in (`rx`) and a sink for the link out (`tx`).
"""

from __future__ import annotations

from pathlib import Path

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import TINY
from rtl.core import ops
from rtl.core.controller import Controller
from rtl.core.ring import Ring
from rtl.verilog import write_verilog

from .. import runner

__all__ = ["BLOCK_BITS", "CONFIG", "PC_BITS", "SB_BITS", "TOPLEVEL", "UOP", "RingTop", "build",
           "make_ring"]

TOPLEVEL = "ring"
CONFIG = TINY
_CTRL = Controller(CONFIG)
PC_BITS = _CTRL.pc_bits
SB_BITS = _CTRL.sb_bits
BLOCK_BITS = _CTRL.block_bits
UOP = ops.uop_layout(PC_BITS, SB_BITS)


def make_ring() -> Ring:
    return Ring(CONFIG, UOP, block_bits=BLOCK_BITS, sb_entries=1 << SB_BITS)


class RingTop(wiring.Component):
    """`Ring` with its vector-buffer read port's responses as plain inputs (`read_resp_valid`,
    `read_resp_payload`: the buffer answers one cycle after a request and cannot be stalled),
    every other port as the router has it."""

    def __init__(self):
        self.ring = make_ring()
        members = {name: member for name, member in self.ring.signature.members.items()
                   if name != "read"}
        members.update({
            "read_req": Out(stream.Signature(BLOCK_BITS)),
            "read_resp_valid": In(1),
            "read_resp_payload": In(16 * CONFIG.align),
        })
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        ring = self.ring
        m.submodules.ring = ring
        wiring.connect(m, wiring.flipped(self.uop), ring.uop)
        wiring.connect(m, ring.tx, wiring.flipped(self.tx))
        wiring.connect(m, wiring.flipped(self.rx), ring.rx)
        wiring.connect(m, wiring.flipped(self.read_req), ring.read.req)
        wiring.connect(m, wiring.flipped(self.write), ring.write)
        m.d.comb += [
            ring.device.eq(self.device), ring.devices.eq(self.devices),
            ring.read.resp.valid.eq(self.read_resp_valid),
            ring.read.resp.payload.eq(self.read_resp_payload),
            self.int_wb.eq(ring.int_wb), self.scalar_wb.eq(ring.scalar_wb),
            self.release_reads.eq(ring.release_reads), self.release_write.eq(ring.release_write),
            self.retire.eq(ring.retire), self.retire_pc.eq(ring.retire_pc),
            self.idle.eq(ring.idle),
        ]
        return m


def build(simulator: str, build_dir: Path):
    source = Path(build_dir) / f"{TOPLEVEL}.v"
    write_verilog(RingTop(), source, TOPLEVEL)
    return runner.build(simulator, build_dir, [runner.for_simulator(simulator, source)],
                        TOPLEVEL)
