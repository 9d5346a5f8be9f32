"""The `Mpu` build under test: its parameters and its simulation build.

The MPU alone, with the TINY config's four lanes of eight: the testbench plays the vector
buffer (read and write ports), the controller (MM and PREFETCH micro-ops) and the HBM read
clients of both weight streamers.
"""

from __future__ import annotations

from pathlib import Path

from amaranth.hdl import Module
from amaranth.lib import wiring

from hw.config import TINY
from rtl.core import ops
from rtl.core.mpu import Mpu
from rtl.verilog import write_verilog

from .. import runner
from ..vbuf_port import connect_plain_read_port, plain_read_port_members

__all__ = ["ADDR_WIDTH", "BLOCK_BITS", "CONFIG", "MAX_TOKENS", "PC_BITS", "SB_BITS", "TOPLEVEL",
           "UOP", "MpuTop", "build", "make_mpu"]

TOPLEVEL = "mpu"
CONFIG = TINY
ADDR_WIDTH = 64
BLOCK_BITS = 12  # 4096 blocks of `align` words: the testbench's vector buffer
PC_BITS = 12
SB_BITS = 3
MAX_TOKENS = 8
UOP = ops.uop_layout(PC_BITS, SB_BITS)


def make_mpu() -> Mpu:
    return Mpu(CONFIG, UOP, block_bits=BLOCK_BITS, sb_entries=1 << SB_BITS,
               max_tokens=MAX_TOKENS, addr_width=ADDR_WIDTH)


class MpuTop(wiring.Component):
    """`Mpu` with its vector-buffer read port's responses as plain inputs (`read_resp_valid`,
    `read_resp_payload`: the buffer answers a request one cycle later and cannot be stalled),
    every other port as the MPU has it."""

    def __init__(self):
        self.mpu = make_mpu()
        super().__init__(plain_read_port_members(self.mpu, BLOCK_BITS, CONFIG.align))

    def elaborate(self, platform):
        m = Module()
        mpu = self.mpu
        m.submodules.mpu = mpu
        wiring.connect(m, wiring.flipped(self.uop), mpu.uop)
        wiring.connect(m, wiring.flipped(self.pref), mpu.pref)
        connect_plain_read_port(m, self, mpu)
        wiring.connect(m, wiring.flipped(self.write), mpu.write)
        for p in range(CONFIG.hbm_ports):
            wiring.connect(m, wiring.flipped(self.axi_pref[p]), mpu.axi_pref[p])
            wiring.connect(m, wiring.flipped(self.axi_direct[p]), mpu.axi_direct[p])
            m.d.comb += mpu.hbm_base[p].eq(self.hbm_base[p])
        m.d.comb += [
            mpu.clear.eq(self.clear),
            self.release_reads.eq(mpu.release_reads),
            self.release_write.eq(mpu.release_write),
            self.retire.eq(mpu.retire),
            self.idle.eq(mpu.idle),
        ]
        for k in range(2):
            m.d.comb += self.retire_pc[k].eq(mpu.retire_pc[k])
        return m


def build(simulator: str, build_dir: Path):
    source = Path(build_dir) / f"{TOPLEVEL}.v"
    write_verilog(MpuTop(), source, TOPLEVEL)
    return runner.build(simulator, build_dir, [runner.for_simulator(simulator, source)],
                        TOPLEVEL)
