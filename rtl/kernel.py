"""`Kernel`: the XRT-compatible kernel top: the AXI4-Lite control slave generated from
`hw.regmap`, one `Core`, an `m_axi` port per HBM pseudo-channel and the ring links.

Ports (Verilog names after `rtl.build` renames them for Vitis): `s_axi_control`
(AXI4-Lite), `m_axi_hbm<k>` (AXI4, 64-bit addresses), `ring_tx` / `ring_rx` (AXI4-Stream),
`interrupt`. The trace ports of the core are passed out for simulation testbenches; a board
build leaves them unconnected.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from hw.regmap import regmap

from .axi import axi4_signature, axil_signature, axis_signature
from .control import ControlRegs
from .core.core import ADDR_WIDTH, RETIRE_LANES, Core
from .core.ring import FLIT_USER

__all__ = ["Kernel", "kernel_signature"]


def kernel_signature(cfg: AccelConfig) -> wiring.Signature:
    """The kernel's ports for `cfg` (what `Kernel(cfg).signature` is)."""
    pc_bits = max(1, (cfg.imem_words - 1).bit_length())
    width = cfg.hbm_port_width_bits
    members = {
        "s_axi_control": In(axil_signature(regmap(cfg).addr_bits)),
        "interrupt": Out(1),
        "ring_tx": Out(axis_signature(16 * cfg.align, FLIT_USER.size)),
        "ring_rx": In(axis_signature(16 * cfg.align, FLIT_USER.size)),
        "trace_issue": Out(1),
        "trace_issue_pc": Out(pc_bits),
        "trace_retire": Out(RETIRE_LANES),
        "trace_retire_pc": Out(pc_bits).array(RETIRE_LANES),
        "trace_done": Out(1),
    }
    for k in range(cfg.hbm_ports):
        members[f"m_axi_hbm{k}"] = Out(axi4_signature(ADDR_WIDTH, width))
    return wiring.Signature(members)


class Kernel(wiring.Component):
    def __init__(self, cfg: AccelConfig, *, max_tokens: int = 128):
        self.cfg = cfg
        self.regmap = regmap(cfg)
        self.max_tokens = max_tokens
        super().__init__(kernel_signature(cfg))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        regs = ControlRegs(self.regmap)
        core = Core(cfg, max_tokens=self.max_tokens)
        m.submodules.control = regs
        m.submodules.core = core
        wiring.connect(m, wiring.flipped(self.s_axi_control), regs.bus)
        m.d.comb += [
            core.start.eq(regs.start),
            core.program.eq(regs.arg_program),
            core.program_words.eq(regs.arg_program_words),
            core.device.eq(regs.arg_device),
            core.devices.eq(regs.arg_devices),
            regs.done.eq(core.done),
            regs.idle.eq(~core.running),
            regs.status_cycles.eq(core.cycles),
            regs.status_fault.eq(core.fault | (core.fault_pc << 8)),
            self.interrupt.eq(regs.interrupt),
            self.trace_issue.eq(core.trace_issue),
            self.trace_issue_pc.eq(core.trace_issue_pc),
            self.trace_retire.eq(core.trace_retire),
            self.trace_done.eq(core.done),
        ]
        for k in range(len(core.trace_retire_pc)):
            m.d.comb += self.trace_retire_pc[k].eq(core.trace_retire_pc[k])
        for k in range(cfg.hbm_ports):
            m.d.comb += core.hbm_base[k].eq(getattr(regs, f"arg_hbm{k}"))
            wiring.connect(m, core.hbm[k], wiring.flipped(getattr(self, f"m_axi_hbm{k}")))
        wiring.connect(m, core.ring_tx, wiring.flipped(self.ring_tx))
        wiring.connect(m, wiring.flipped(self.ring_rx), core.ring_rx)
        return m
