"""The simulated card: `devices` XRT kernels (`tandem_kernel`, the RTL build's Verilog) with
every port a board connects left at the top level, for the cocotb models of the card to drive.

The top is `rtl.build.Cluster`, the cluster the board build writes: per device `d` the AXI4-Lite
control slave as `dev<d>_s_axi_control__*` (the host's register window), each `m_axi_hbm<k>`
master as `dev<d>_m_axi_hbm<k>__*` (answered by a cocotbext-axi `AxiRam` standing for the HBM
bank the connectivity binds it to) and `dev<d>_interrupt`. The ring is closed in HDL as the link
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
from hw.regmap import KERNEL_MODULE
from rtl.build import Cluster, kernel_verilog
from rtl.verilog import write_verilog

from .. import runner

__all__ = ["KERNEL", "TOPLEVEL", "CardBench", "build", "control_prefix", "hbm_prefix"]

TOPLEVEL = "tandem_pynq_tb"
KERNEL = KERNEL_MODULE


def control_prefix(device: int) -> str:
    """The cocotbext-axi bus prefix of kernel `device`'s AXI4-Lite control slave."""
    return f"dev{device}_s_axi_control_"


def hbm_prefix(device: int, port: int) -> str:
    """The cocotbext-axi bus prefix of kernel `device`'s HBM port `port`."""
    return f"dev{device}_m_axi_hbm{port}_"


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


def build(bench: CardBench, simulator: str = "verilator", build_root: Path | None = None):
    """The card's Verilog, compiled (cached while the RTL is unchanged); returns (runner,
    build dir)."""
    root = build_root or runner.REPO_ROOT / "build" / "sim" / simulator
    build_dir = Path(root) / f"pynq-{bench.config.name}-{bench.key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    kernel_v = kernel_verilog(bench.config, build_dir / f"{KERNEL}.v", KERNEL)
    tb = build_dir / f"{TOPLEVEL}.v"
    write_verilog(Cluster(bench.config, bench.devices, KERNEL), tb, TOPLEVEL)
    sources = [runner.for_simulator(simulator, kernel_v), runner.for_simulator(simulator, tb)]
    extra = ["-fno-merge-cond"] if simulator == "verilator" else []
    return runner.build(simulator, build_dir, sources, TOPLEVEL, extra_args=extra,
                        cxx_opt="-O0", log_file=build_dir / "build.log"), build_dir
