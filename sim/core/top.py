"""The end-to-end simulation build: `devices` kernels (`rtl.kernel.Kernel`), each with an HDL HBM
model per port (`sim/hdl/hbm_model.v`), joined in a ring by link models (`sim/hdl/ring_link.v`).

The clock runs in HDL and the memories load and dump themselves, so a run needs Python only to
write the control registers, start the kernels and wait. The testbench writes a trace per
device (`+trace<d>=FILE`): `I cycle pc` for each issue, `R cycle pc` for each completion and
`D cycle` at the end of the run, the raw material for the comparison with the timing model.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from hw.config import AccelConfig
from hw.regmap import KERNEL_MODULE, regmap
from rtl.build import kernel_verilog
from rtl.core.core import ADDR_WIDTH, RETIRE_LANES
from rtl.core.ring import FLIT_USER

from .. import runner

__all__ = ["TOPLEVEL", "Bench", "build", "hbm_base"]

TOPLEVEL = "tandem_tb"
KERNEL = KERNEL_MODULE
_HDL = runner.REPO_ROOT / "sim" / "hdl"


def hbm_base(port: int) -> int:
    """Address of HBM port `port`'s buffer (each port's memory model answers from here)."""
    return (port + 1) << 32


@dataclass(frozen=True)
class Bench:
    """What one simulation build holds."""

    config: AccelConfig
    devices: int = 2  #: kernels in the ring (a run may start fewer)
    depth_log2: int = 15  #: beats per HBM model, log2

    @property
    def key(self) -> str:
        raw = json.dumps({"config": self.config.to_dict(), "devices": self.devices,
                          "depth_log2": self.depth_log2}, sort_keys=True)
        return hashlib.sha1(raw.encode()).hexdigest()[:10]


def _tb_text(bench: Bench, regmap_bits: int) -> str:
    cfg = bench.config
    P = cfg.hbm_ports
    width = cfg.hbm_port_width_bits
    flit = 16 * cfg.align
    pc_bits = max(1, (cfg.imem_words - 1).bit_length())
    gap = max(1, math.ceil(flit / 8 / cfg.ring_bytes_per_cycle))
    lines = ["`timescale 1ns/1ps", f"module {TOPLEVEL} (", "    output reg clk,",
             "    input wire rst,", "    input wire dump,", "    output reg [31:0] cycle,"]
    for d in range(bench.devices):
        lines += [
            f"    input wire [{regmap_bits - 1}:0] ctl{d}_awaddr, input wire ctl{d}_awvalid,",
            f"    output wire ctl{d}_awready, input wire [31:0] ctl{d}_wdata,",
            f"    input wire [3:0] ctl{d}_wstrb, input wire ctl{d}_wvalid,",
            f"    output wire ctl{d}_wready, output wire [1:0] ctl{d}_bresp,",
            f"    output wire ctl{d}_bvalid, input wire ctl{d}_bready,",
            f"    input wire [{regmap_bits - 1}:0] ctl{d}_araddr, input wire ctl{d}_arvalid,",
            f"    output wire ctl{d}_arready, output wire [31:0] ctl{d}_rdata,",
            f"    output wire [1:0] ctl{d}_rresp, output wire ctl{d}_rvalid,",
            f"    input wire ctl{d}_rready,",
            f"    output wire irq{d},",
        ]
    lines[-1] = lines[-1].rstrip(",")
    lines += [");", "    initial clk = 1'b0;", "    always #5 clk = ~clk;",
              "    always @(posedge clk) cycle <= rst ? 32'd0 : cycle + 32'd1;"]
    n = bench.devices
    for d in range(n):
        lines += [f"    wire [{flit - 1}:0] tx{d}_tdata, rx{d}_tdata;",
                  f"    wire [{FLIT_USER.size - 1}:0] tx{d}_tuser, rx{d}_tuser;",
                  f"    wire tx{d}_tlast, tx{d}_tvalid, tx{d}_tready, rx{d}_tlast, rx{d}_tvalid,"
                  f" rx{d}_tready;",
                  f"    wire trace_issue{d}, trace_done{d};",
                  f"    wire [{pc_bits - 1}:0] trace_issue_pc{d};",
                  f"    wire [{RETIRE_LANES - 1}:0] trace_retire{d};"]
        lines += [f"    wire [{pc_bits - 1}:0] trace_retire_pc{d}_{k};"
                  for k in range(RETIRE_LANES)]
        ports = [".clk(clk)", ".rst(rst)", f".interrupt(irq{d})"]
        for sig in ("awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready",
                    "bresp", "bvalid", "bready", "araddr", "arvalid", "arready", "rdata",
                    "rresp", "rvalid", "rready"):
            ports.append(f".s_axi_control__{sig}(ctl{d}_{sig})")
        for sig in ("tdata", "tuser", "tlast", "tvalid", "tready"):
            ports += [f".ring_tx__{sig}(tx{d}_{sig})", f".ring_rx__{sig}(rx{d}_{sig})"]
        ports += [f".trace_issue(trace_issue{d})", f".trace_issue_pc(trace_issue_pc{d})",
                  f".trace_retire(trace_retire{d})", f".trace_done(trace_done{d})"]
        ports += [f".trace_retire_pc__{k}(trace_retire_pc{d}_{k})" for k in range(RETIRE_LANES)]
        for p in range(P):
            pre = f"hbm{d}_{p}"
            lines += [f"    wire {pre}_awid, {pre}_arid, {pre}_bid, {pre}_rid;",
                      f"    wire [{ADDR_WIDTH - 1}:0] {pre}_awaddr, {pre}_araddr;",
                      f"    wire [7:0] {pre}_awlen, {pre}_arlen;",
                      f"    wire [2:0] {pre}_awsize, {pre}_arsize;",
                      f"    wire [1:0] {pre}_awburst, {pre}_arburst, {pre}_bresp, {pre}_rresp;",
                      f"    wire [{width - 1}:0] {pre}_wdata, {pre}_rdata;",
                      f"    wire [{width // 8 - 1}:0] {pre}_wstrb;",
                      f"    wire {pre}_awvalid, {pre}_awready, {pre}_wlast, {pre}_wvalid, "
                      f"{pre}_wready, {pre}_bvalid, {pre}_bready, {pre}_arvalid, {pre}_arready,"
                      f" {pre}_rlast, {pre}_rvalid, {pre}_rready;"]
            sigs = ("awid", "awaddr", "awlen", "awsize", "awburst", "awvalid", "awready",
                    "wdata", "wstrb", "wlast", "wvalid", "wready", "bid", "bresp", "bvalid",
                    "bready", "arid", "araddr", "arlen", "arsize", "arburst", "arvalid",
                    "arready", "rid", "rdata", "rresp", "rlast", "rvalid", "rready")
            ports += [f".m_axi_hbm{p}__{s}({pre}_{s})" for s in sigs]
            mem_ports = [".clk(clk)", ".rst(rst)", f".base(64'h{hbm_base(p):016x})",
                         ".dump(dump)"] + [f".{s}({pre}_{s})" for s in sigs]
            lines += [
                f"    tandem_hbm_model #(.DATA_W({width}), .ADDR_W({ADDR_WIDTH}), "
                f".DEPTH_LOG2({bench.depth_log2}), .LATENCY({cfg.hbm_latency_cycles}), "
                f".SEED({1 + 17 * (d * P + p)}), .INIT_ARG(\"hbm{d}_{p}=%s\"), "
                f".DUMP_ARG(\"hbm{d}_{p}_out=%s\"), .LOG_ARG(\"hbm{d}_{p}_log=%s\"), "
                f".LOG_BYTES({cfg.scalar_area_bytes if p == 0 else 0})) u_{pre} (",
                "        " + ", ".join(mem_ports), "    );"]
        lines += [f"    {KERNEL} u_kernel{d} (", "        " + ",\n        ".join(ports), "    );"]
        nxt = (d + 1) % n
        lines += [
            f"    tandem_ring_link #(.DATA_W({flit}), .USER_W({FLIT_USER.size}), "
            f".LATENCY({cfg.ring_hop_cycles}), .GAP({gap}), .SEED({101 + d})) u_link{d} (",
            f"        .clk(clk), .rst(rst), .s_tdata(tx{d}_tdata), .s_tuser(tx{d}_tuser),",
            f"        .s_tlast(tx{d}_tlast), .s_tvalid(tx{d}_tvalid), .s_tready(tx{d}_tready),",
            f"        .m_tdata(rx{nxt}_tdata), .m_tuser(rx{nxt}_tuser), .m_tlast(rx{nxt}_tlast),",
            f"        .m_tvalid(rx{nxt}_tvalid), .m_tready(rx{nxt}_tready)", "    );",
            f"    integer trace{d};",
            f"    reg [8*512-1:0] trace_path{d};",
            f"    initial trace{d} = $value$plusargs(\"trace{d}=%s\", trace_path{d}) ? "
            f"$fopen(trace_path{d}, \"w\") : 0;",
            "    always @(posedge clk) begin",
            f"        if (!rst && trace{d} != 0) begin",
            f"            if (trace_issue{d}) $fwrite(trace{d}, \"I %0d %0d\\n\", cycle, "
            f"trace_issue_pc{d});",
        ]
        for k in range(RETIRE_LANES):
            lines.append(f"            if (trace_retire{d}[{k}]) "
                         f"$fwrite(trace{d}, \"R %0d %0d\\n\", cycle, trace_retire_pc{d}_{k});")
        lines += [f"            if (trace_done{d}) begin $fwrite(trace{d}, \"D %0d\\n\", cycle); "
                  f"$fflush(trace{d}); end",
                  "        end", "    end"]
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def build(simulator: str, bench: Bench, build_root: Path | None = None):
    """Verilog for the kernel and the testbench, compiled; returns (runner, build dir)."""
    root = build_root or runner.REPO_ROOT / "build" / "sim" / simulator
    build_dir = Path(root) / f"e2e-{bench.config.name}-{bench.key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    # converting the kernel takes a minute; it is redone only when the RTL sources change
    kernel_v = kernel_verilog(bench.config, build_dir / f"{KERNEL}.v", KERNEL)
    tb = build_dir / f"{TOPLEVEL}.v"
    text = _tb_text(bench, regmap(bench.config).addr_bits)
    if not tb.is_file() or tb.read_text() != text:
        tb.write_text(text)
    sources = [runner.for_simulator(simulator, kernel_v), _HDL / "hbm_model.v",
               _HDL / "ring_link.v", tb]
    # Verilator's merge-cond pass takes minutes on a design this size and gains little; GCC
    # takes ~10x longer on the model's C++ at -Os than at -O0, which costs more than the
    # short end-to-end runs gain
    extra = ["-fno-merge-cond"] if simulator == "verilator" else []
    return runner.build(simulator, build_dir, sources, TOPLEVEL, includes=[_HDL],
                        extra_args=extra, cxx_opt="-O0",
                        log_file=build_dir / "build.log"), build_dir

