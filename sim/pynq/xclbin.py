"""The simulated card's "xclbin": a JSON file beside the kernel.xml and link.cfg that
`hw.vitis` generates for the kernel, as a Vitis build directory holds the real one beside them.

A config that no Alveo shell builds (`tiny`) links against `SIM_PLATFORM`, a card with the
config's channel size per bank. `link_cfg` replaces the generated connectivity (a test binds
the ports to other banks to check that a driver follows it).
"""

from __future__ import annotations

import json
from pathlib import Path

from hw.config import AccelConfig
from hw.regmap import regmap
from hw.vitis import (
    KERNEL_NAME,
    PLATFORMS,
    KernelPorts,
    Platform,
    connectivity_cfg,
    kernel_xml,
)

__all__ = ["XCLBIN_NAME", "sim_platform", "write_xclbin"]

XCLBIN_NAME = f"{KERNEL_NAME}.sim.xclbin"


def sim_platform(config: AccelConfig) -> Platform:
    """The platform of a simulated card for `config`: its Alveo's, or 32 banks of the config's
    channel size."""
    if config.name in PLATFORMS:
        return PLATFORMS[config.name]
    size = 1 << (config.hbm_channel_bytes - 1).bit_length()
    return Platform("tandem_sim", "simulated card", 32, size, "SLR0")


def write_xclbin(config: AccelConfig, out: str | Path, verilog: str, build_dir: str | Path,
                 link_cfg: str | None = None) -> Path:
    """Write kernel.xml, link.cfg and the xclbin file into `out`; returns the xclbin's path.
    `verilog` is the kernel's Verilog (its ports give kernel.xml's widths); `build_dir` is
    the card's simulation build."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    platform = sim_platform(config)
    (out / "kernel.xml").write_text(kernel_xml(config, KernelPorts.from_verilog(verilog, config)))
    (out / "link.cfg").write_text(link_cfg or connectivity_cfg(config, platform=platform))
    path = out / XCLBIN_NAME
    path.write_text(json.dumps({
        "format": "tandem-sim-xclbin", "kernel_xml": "kernel.xml", "link_cfg": "link.cfg",
        "vlnv": f"tandem:kernel:{KERNEL_NAME}:1.0", "config": config.to_dict(),
        "platform": platform.name, "bank_bytes": platform.hbm_bank_bytes,
        "banks": platform.hbm_banks, "control_bytes": max(0x1000, 1 << regmap(config).addr_bits),
        "build_dir": str(build_dir)}, indent=1))
    return path
