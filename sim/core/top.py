"""The end-to-end simulation build: `devices` kernels (`rtl.kernel.Kernel`), each with an HDL HBM
model per port (`sim/hdl/hbm_model.v`), joined in a ring by link models (`sim/hdl/ring_link.v`).
The ring is `rtl.build.Cluster`'s, the one the board build uses, with a link model on each hop;
the top around it is generated from Amaranth too (only the models are Verilog).

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

from amaranth.hdl import C, Cat, ClockDomain, ClockSignal, Instance, Module, ResetSignal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from hw.regmap import KERNEL_MODULE
from rtl.build import Cluster, kernel_verilog
from rtl.core.core import ADDR_WIDTH, RETIRE_LANES
from rtl.core.ring import FLIT_USER
from rtl.verilog import write_verilog

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


class _Top(wiring.Component):
    """`tandem_tb`: `rtl.build.Cluster` (the ring of kernels, assembled there) with a
    `tandem_ring_link` on every hop and its trace ports passed out, an HBM model on every HBM
    port, a trace writer per kernel, the HDL clock and a cycle counter.

    Ports: `rst` and `dump` (the memory models write their contents out while it is high) in,
    `clk` and `cycle` (rising edges since reset) out, and per kernel `d` its AXI4-Lite control
    slave `dev<d>_s_axi_control__*` and its `dev<d>_interrupt`, as in the cluster."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.cluster = Cluster(bench.config, bench.devices, KERNEL, link=self._link,
                               expose=("trace_",))
        members = {"rst": In(1), "dump": In(1), "clk": Out(1), "cycle": Out(32)}
        for name, member in self.cluster.signature.members.items():
            if name.endswith(("_s_axi_control", "_interrupt")):
                members[name] = member
        super().__init__(members)

    def _link(self, d: int, tx: dict, rx: dict) -> Instance:
        cfg = self.bench.config
        flit = 16 * cfg.align
        return Instance(
            "tandem_ring_link",
            p_DATA_W=flit, p_USER_W=FLIT_USER.size, p_LATENCY=cfg.ring_hop_cycles,
            p_GAP=max(1, math.ceil(flit / 8 / cfg.ring_bytes_per_cycle)), p_SEED=101 + d,
            i_clk=ClockSignal(), i_rst=ResetSignal(),
            i_s_tdata=tx["tdata"], i_s_tuser=tx["tuser"], i_s_tlast=tx["tlast"],
            i_s_tvalid=tx["tvalid"], o_s_tready=tx["tready"],
            o_m_tdata=rx["tdata"], o_m_tuser=rx["tuser"], o_m_tlast=rx["tlast"],
            o_m_tvalid=rx["tvalid"], i_m_tready=rx["tready"])

    def elaborate(self, platform):
        cfg = self.bench.config
        m = Module()
        m.domains.sync = sync = ClockDomain("sync")
        m.submodules.clock = Instance("tandem_sim_clock", o_clk=sync.clk)
        m.d.comb += [sync.rst.eq(self.rst), self.clk.eq(sync.clk)]
        m.d.sync += self.cycle.eq(self.cycle + 1)

        m.submodules.cluster = cluster = self.cluster
        for name in self.signature.members:
            if name.endswith("_s_axi_control"):
                wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(cluster, name))
            elif name.endswith("_interrupt"):
                m.d.comb += getattr(self, name).eq(getattr(cluster, name))

        P = cfg.hbm_ports
        for d in range(self.bench.devices):
            for p in range(P):
                axi = getattr(cluster, f"dev{d}_m_axi_hbm{p}")
                bus = {f"{'o' if member.flow == In else 'i'}_{sig}": getattr(axi, sig)
                       for sig, member in axi.signature.members.items()}
                m.submodules[f"hbm{d}_{p}"] = Instance(
                    "tandem_hbm_model",
                    p_DATA_W=cfg.hbm_port_width_bits, p_ADDR_W=ADDR_WIDTH,
                    p_DEPTH_LOG2=self.bench.depth_log2, p_LATENCY=cfg.hbm_latency_cycles,
                    p_SEED=1 + 17 * (d * P + p), p_INIT_ARG=f"hbm{d}_{p}=%s",
                    p_DUMP_ARG=f"hbm{d}_{p}_out=%s", p_LOG_ARG=f"hbm{d}_{p}_log=%s",
                    p_LOG_BYTES=cfg.scalar_area_bytes if p == 0 else 0,
                    i_clk=ClockSignal(), i_rst=ResetSignal(), i_base=C(hbm_base(p), 64),
                    i_dump=self.dump, **bus)
            pcs = getattr(cluster, f"dev{d}_trace_retire_pc")
            m.submodules[f"trace{d}"] = Instance(
                "tandem_trace_writer",
                p_PC_W=len(pcs[0]), p_LANES=RETIRE_LANES, p_PATH_ARG=f"trace{d}=%s",
                i_clk=ClockSignal(), i_rst=ResetSignal(), i_cycle=self.cycle,
                i_issue=getattr(cluster, f"dev{d}_trace_issue"),
                i_issue_pc=getattr(cluster, f"dev{d}_trace_issue_pc"),
                i_retire=getattr(cluster, f"dev{d}_trace_retire"),
                i_retire_pc=Cat(*pcs), i_done=getattr(cluster, f"dev{d}_trace_done"))
        return m


def build(simulator: str, bench: Bench, build_root: Path | None = None):
    """Verilog for the kernel and the testbench, compiled; returns (runner, build dir)."""
    root = build_root or runner.REPO_ROOT / "build" / "sim" / simulator
    build_dir = Path(root) / f"e2e-{bench.config.name}-{bench.key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    # converting the kernel takes a minute; it is redone only when the RTL sources change
    kernel_v = kernel_verilog(bench.config, build_dir / f"{KERNEL}.v", KERNEL)
    tb = build_dir / f"{TOPLEVEL}.v"
    write_verilog(_Top(bench), tb, TOPLEVEL)
    sources = [runner.for_simulator(simulator, kernel_v), _HDL / "hbm_model.v",
               _HDL / "ring_link.v", _HDL / "sim_clock.v", _HDL / "trace_writer.v",
               runner.for_simulator(simulator, tb)]
    # Verilator's merge-cond pass takes minutes on a design this size and gains little; GCC
    # takes ~10x longer on the model's C++ at -Os than at -O0, which costs more than the
    # short end-to-end runs gain
    extra = ["-fno-merge-cond"] if simulator == "verilator" else []
    return runner.build(simulator, build_dir, sources, TOPLEVEL, includes=[_HDL],
                        extra_args=extra, cxx_opt="-O0",
                        log_file=build_dir / "build.log"), build_dir

