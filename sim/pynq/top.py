"""The simulated card: `devices` XRT kernels (`tandem_kernel`, the RTL build's Verilog) with
every port a board connects left at the top level, for the cocotb models of the card to drive.

Per device `d`: the AXI4-Lite control slave as `d<d>_ctl_*` (the host's register window), each
`m_axi_hbm<k>` master as `d<d>_hbm<k>_*` (answered by a cocotbext-axi `AxiRam` standing for the
HBM bank the connectivity binds it to) and `d<d>_irq`. The ring is closed in HDL as the link
config closes it on a card: kernel d's `ring_tx` into kernel (d + 1) % devices' `ring_rx` (a
ring of one loops back). The clock comes from cocotb (`cocotb.clock.Clock`, run in the GPI):
cocotbext-axi's models drive their outputs just after the rising edge, which races with a
clock generated in HDL under Verilator (the kernel saw R beats that the RAM had not sent).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from hw.config import AccelConfig
from hw.regmap import KERNEL_MODULE, regmap
from rtl.build import kernel_verilog
from rtl.core.core import ADDR_WIDTH
from rtl.core.ring import FLIT_USER

from .. import runner

__all__ = ["AXI_SIGNALS", "CTL_SIGNALS", "KERNEL", "TOPLEVEL", "CardBench", "build"]

TOPLEVEL = "tandem_pynq_tb"
KERNEL = KERNEL_MODULE
CTL_SIGNALS = ("awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready", "bresp",
               "bvalid", "bready", "araddr", "arvalid", "arready", "rdata", "rresp", "rvalid",
               "rready")
AXI_SIGNALS = ("awid", "awaddr", "awlen", "awsize", "awburst", "awvalid", "awready", "wdata",
               "wstrb", "wlast", "wvalid", "wready", "bid", "bresp", "bvalid", "bready", "arid",
               "araddr", "arlen", "arsize", "arburst", "arvalid", "arready", "rid", "rdata",
               "rresp", "rlast", "rvalid", "rready")
_OUTPUTS = {"awready", "wready", "bresp", "bvalid", "arready", "rdata", "rresp", "rvalid"}
_MASTER_OUT = {"awid", "awaddr", "awlen", "awsize", "awburst", "awvalid", "wdata", "wstrb",
               "wlast", "wvalid", "bready", "arid", "araddr", "arlen", "arsize", "arburst",
               "arvalid", "rready"}


@dataclass(frozen=True)
class CardBench:
    """What one build of the simulated card holds."""

    config: AccelConfig
    devices: int = 1  #: kernels (cards) in the ring

    @property
    def key(self) -> str:
        raw = json.dumps({"config": self.config.to_dict(), "devices": self.devices},
                         sort_keys=True)
        return hashlib.sha1(raw.encode()).hexdigest()[:10]


def _tb_text(bench: CardBench) -> str:
    cfg = bench.config
    bits = regmap(cfg).addr_bits
    width = cfg.hbm_port_width_bits
    flit = 16 * cfg.align
    n = bench.devices
    ports = ["input wire clk", "input wire rst"]
    body = []
    for d in range(n):
        ctl_widths = {"awaddr": bits, "araddr": bits, "wdata": 32, "rdata": 32, "wstrb": 4,
                      "bresp": 2, "rresp": 2}
        for sig in CTL_SIGNALS:
            w = ctl_widths.get(sig, 1)
            rng = f"[{w - 1}:0] " if w > 1 else ""
            ports.append(f"{'output' if sig in _OUTPUTS else 'input'} wire {rng}d{d}_ctl_{sig}")
        ports.append(f"output wire d{d}_irq")
        axi_widths = {"awaddr": ADDR_WIDTH, "araddr": ADDR_WIDTH, "awlen": 8, "arlen": 8,
                      "awsize": 3, "arsize": 3, "awburst": 2, "arburst": 2, "bresp": 2,
                      "rresp": 2, "wdata": width, "rdata": width, "wstrb": width // 8}
        for p in range(cfg.hbm_ports):
            for sig in AXI_SIGNALS:
                w = axi_widths.get(sig, 1)
                rng = f"[{w - 1}:0] " if w > 1 else ""
                ports.append(f"{'output' if sig in _MASTER_OUT else 'input'} wire "
                             f"{rng}d{d}_hbm{p}_{sig}")
        body += [f"    wire [{flit - 1}:0] tx{d}_tdata;",
                 f"    wire [{FLIT_USER.size - 1}:0] tx{d}_tuser;",
                 f"    wire tx{d}_tlast, tx{d}_tvalid, tx{d}_tready;"]
    for d in range(n):
        prev = (d - 1) % n
        conns = [".clk(clk)", ".rst(rst)", f".interrupt(d{d}_irq)"]
        conns += [f".s_axi_control__{s}(d{d}_ctl_{s})" for s in CTL_SIGNALS]
        for p in range(cfg.hbm_ports):
            conns += [f".m_axi_hbm{p}__{s}(d{d}_hbm{p}_{s})" for s in AXI_SIGNALS]
        for s in ("tdata", "tuser", "tlast", "tvalid", "tready"):
            conns += [f".ring_tx__{s}(tx{d}_{s})", f".ring_rx__{s}(tx{prev}_{s})"]
        body += [f"    {KERNEL} u_kernel{d} (", "        " + ",\n        ".join(conns), "    );"]
    return ("`timescale 1ns/1ps\n" + f"module {TOPLEVEL} (\n    " + ",\n    ".join(ports)
            + "\n);\n" + "\n".join(body) + "\nendmodule\n")


def build(bench: CardBench, simulator: str = "verilator", build_root: Path | None = None):
    """The card's Verilog, compiled (cached while the RTL is unchanged); returns (runner,
    build dir)."""
    root = build_root or runner.REPO_ROOT / "build" / "sim" / simulator
    build_dir = Path(root) / f"pynq-{bench.config.name}-{bench.key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    kernel_v = kernel_verilog(bench.config, build_dir / f"{KERNEL}.v", KERNEL)
    tb = build_dir / f"{TOPLEVEL}.v"
    text = _tb_text(bench)
    if not tb.is_file() or tb.read_text() != text:
        tb.write_text(text)
    sources = [runner.for_simulator(simulator, kernel_v), tb]
    extra = ["-fno-merge-cond"] if simulator == "verilator" else []
    return runner.build(simulator, build_dir, sources, TOPLEVEL, extra_args=extra,
                        cxx_opt="-O0", log_file=build_dir / "build.log"), build_dir
