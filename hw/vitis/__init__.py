"""Board packaging for Vitis (Alveo U280 / U55C): `kernel.xml`, the v++ connectivity config and
the build scripts, generated from the register map (`hw.regmap`), the config and the kernel's
Verilog.

`write_build(config, out, ...)` fills a directory; `python -m hw.vitis --config u280 --out DIR`
does the same from the command line. Then `DIR/build.sh` runs the flow on a machine with Vitis:
the RTL build's Verilog -> kernel.xml and the wrapper from its ports -> .xo -> .xclbin.
"""

from __future__ import annotations

from pathlib import Path

from ..config import AccelConfig
from .kernel_xml import KERNEL_NAME, RING_PORTS, RTL_MODULE, KernelPorts, kernel_xml
from .link import PLATFORMS, Platform, RingLink, connectivity_cfg, platform_for, port_banks
from .scripts import RTL_BUILD, VERILOG_FILE, WRAPPER_FILE, build_script, package_tcl
from .wrapper import vitis_wrapper

__all__ = [
    "KERNEL_NAME",
    "PLATFORMS",
    "RING_PORTS",
    "RTL_BUILD",
    "RTL_MODULE",
    "VERILOG_FILE",
    "WRAPPER_FILE",
    "KernelPorts",
    "Platform",
    "RingLink",
    "build_script",
    "connectivity_cfg",
    "kernel_xml",
    "package_tcl",
    "platform_for",
    "port_banks",
    "vitis_wrapper",
    "write_build",
]


def write_build(config: AccelConfig, out: str | Path, devices: int = 1,
                ring_link: RingLink | None = None, verilog: str | None = None,
                target: str = "hw") -> list[Path]:
    """Write config.json, link.cfg, package_kernel.tcl and build.sh and, given the RTL build's
    Verilog (text), kernel.xml and the wrapper `hdl/WRAPPER_FILE` from its ports. Returns the
    paths written."""
    platform_for(config)  # refuse a config no platform builds before writing anything
    out = Path(out)
    files = {
        "config.json": config.to_json(),
        "link.cfg": connectivity_cfg(config, devices, ring_link),
        "package_kernel.tcl": package_tcl(config),
        "build.sh": build_script(config, devices, ring_link, target),
    }
    if verilog is not None:
        files["kernel.xml"] = kernel_xml(config, KernelPorts.from_verilog(verilog, config))
        files[f"hdl/{WRAPPER_FILE}"] = vitis_wrapper(verilog)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    (out / "build.sh").chmod(0o755)
    return written
