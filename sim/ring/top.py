"""The `Ring` build under test: its parameters and its simulation build.

One router of the TINY config as the core builds it (the controller's micro-op layout and
vector-buffer block width). The testbench plays the controller (micro-ops in), the vector
buffer (a read answers one cycle after its request) and the two neighbours on the ring: an
AXI4-Stream source for the link in (`rx`) and a sink for the link out (`tx`).
"""

from __future__ import annotations

from pathlib import Path

from amaranth.hdl import Module
from amaranth.lib import wiring

from hw.config import TINY
from rtl.core import ops
from rtl.core.controller import Controller
from rtl.core.ring import Ring
from rtl.verilog import write_verilog

from .. import runner
from ..vbuf_port import connect_plain_read_port, plain_read_port_members

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
        super().__init__(plain_read_port_members(self.ring, BLOCK_BITS, CONFIG.align))

    def elaborate(self, platform):
        m = Module()
        ring = self.ring
        m.submodules.ring = ring
        wiring.connect(m, wiring.flipped(self.uop), ring.uop)
        wiring.connect(m, ring.tx, wiring.flipped(self.tx))
        wiring.connect(m, wiring.flipped(self.rx), ring.rx)
        connect_plain_read_port(m, self, ring)
        wiring.connect(m, wiring.flipped(self.write), ring.write)
        m.d.comb += [
            ring.device.eq(self.device), ring.devices.eq(self.devices),
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
