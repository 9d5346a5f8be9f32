"""Verilog for any `AccelConfig`: the kernel (one per FPGA) and a cluster top of K kernels in a
ring, plus a manifest of what was written.

`build(config, devices, out)` writes into `out`:
- `tandem_kernel.v`: `rtl.kernel.Kernel` (AXI4-Lite control, one `m_axi_hbm<k>` per HBM port,
  the ring's AXI4-Stream links, `interrupt`); the same module on every device, which learns
  its place in the ring from its `device` / `devices` arguments;
- `tandem_cluster.v`: `Cluster`, `devices` instances of the kernel with each one's `ring_tx`
  joined to the next one's `ring_rx`, every other kernel port passed out as `dev<d>_<port>`;
- `manifest.json`: the config, the device count, the register map and the file names.

The kernel's conversion takes a minute; it is skipped when `tandem_kernel.v` was written from
the same RTL sources and config (`kernel.stamp` records them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from amaranth.hdl import ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from hw.config import AccelConfig
from hw.regmap import KERNEL_MODULE, regmap

from .kernel import Kernel, kernel_signature
from .verilog import to_verilog, write_verilog

__all__ = ["CLUSTER", "KERNEL", "Cluster", "build", "kernel_verilog", "sources_fingerprint"]

KERNEL = KERNEL_MODULE
CLUSTER = "tandem_cluster"
_ROOT = Path(__file__).resolve().parent.parent
#: kernel ports a cluster keeps inside (the ring) or leaves unconnected (simulation traces)
_INTERNAL = ("ring_tx", "ring_rx", "trace_")
_RING = ("ring_tx", "ring_rx")

#: What carries kernel d's flits to the next kernel: called with d and the flit signals on the
#: transmitting side and on the receiving side (dicts keyed by the ring stream's member names,
#: `tdata`, `tuser`, `tlast`, `tvalid`, `tready`), it returns the elaboratable joining them.
LinkFactory = Callable[[int, dict[str, Signal], dict[str, Signal]], Elaboratable]


def sources_fingerprint() -> str:
    """A hash of every `rtl/` and `hw/` source: a kernel converted from other sources is stale."""
    h = hashlib.sha1()
    for folder in ("rtl", "hw"):
        for path in sorted((_ROOT / folder).rglob("*.py")):
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def kernel_verilog(config: AccelConfig, path: Path, name: str = KERNEL) -> Path:
    """Write `Kernel(config)` as module `name` to `path`, unless the file there was made from
    the same sources and config."""
    path = Path(path)
    stamp = path.with_suffix(".stamp")
    key = json.dumps({"sources": sources_fingerprint(), "config": config.to_dict(),
                      "name": name}, sort_keys=True)
    if not path.is_file() or not stamp.is_file() or stamp.read_text() != key:
        write_verilog(Kernel(config), path, name)
        stamp.write_text(key)
    return path


def _port_name(path: tuple) -> str:
    return "__".join(str(p) for p in path)


class Cluster(wiring.Component):
    """`devices` kernels (instances of the Verilog module `kernel`, converted separately) joined
    in a ring: kernel d's `ring_tx` drives kernel (d + 1) % devices' `ring_rx`. Each kernel's
    control, HBM and interrupt ports appear as `dev<d>_<name>`.

    The same ring serves the board build and the simulation tops: `link` puts a model of the
    cable (built by the `LinkFactory`) on every hop instead of a direct connection, and
    `expose` passes out the kernel ports a board leaves unconnected whose names start with one
    of its prefixes (the simulation traces, `"trace_"`)."""

    def __init__(self, config: AccelConfig, devices: int, kernel: str = KERNEL, *,
                 link: LinkFactory | None = None, expose: tuple[str, ...] = ()):
        if not isinstance(devices, int) or devices < 1:
            raise ValueError(f"devices must be a positive integer, not {devices!r}")
        inside = [p for p in expose if any(r.startswith(p) or p.startswith(r) for r in _RING)]
        if inside:
            raise ValueError(f"the ring ports stay inside the cluster; expose {inside[0]!r} "
                             "cannot pass them out")
        self.config = config
        self.devices = devices
        self.kernel = kernel
        self.link = link
        self.expose = tuple(expose)
        self._kernel_signature = kernel_signature(config)
        members = {}
        for d in range(devices):
            for name, member in self._kernel_signature.members.items():
                if not name.startswith(_INTERNAL) or name.startswith(self.expose):
                    members[f"dev{d}_{name}"] = member
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        ring = self._kernel_signature.members["ring_tx"].signature
        links = [{name: Signal(member.shape, name=f"link{d}_{name}")
                  for name, member in ring.members.items()} for d in range(self.devices)]
        ports: list[dict] = [{"i_clk": ClockSignal(), "i_rst": ResetSignal()}
                             for _ in range(self.devices)]
        for path, member, value in self.signature.flatten(self):
            d, _, name = _port_name(path).removeprefix("dev").partition("_")
            direction = "i_" if member.flow == In else "o_"
            ports[int(d)][direction + name] = value
        for d in range(self.devices):
            nxt = (d + 1) % self.devices
            tx = rx = links[d]
            if self.link is not None:  # the hop's far end, behind the link model
                rx = {name: Signal(member.shape, name=f"link{d}_rx_{name}")
                      for name, member in ring.members.items()}
                m.submodules[f"link{d}"] = self.link(d, tx, rx)
            for name, member in ring.members.items():
                tx_out = member.flow != In  # driven by the transmitter
                ports[d][("o_" if tx_out else "i_") + f"ring_tx__{name}"] = tx[name]
                ports[nxt][("i_" if tx_out else "o_") + f"ring_rx__{name}"] = rx[name]
        for d in range(self.devices):
            m.submodules[f"kernel{d}"] = Instance(self.kernel, **ports[d])
        return m


def build(config: AccelConfig, devices: int, out: Path) -> list[Path]:
    """Write the kernel, the cluster top and the manifest for `devices` devices into `out`;
    returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kernel_v = kernel_verilog(config, out / f"{KERNEL}.v")
    cluster = Cluster(config, devices)
    cluster_v = out / f"{CLUSTER}.v"
    text = to_verilog(cluster, CLUSTER)
    if not cluster_v.is_file() or cluster_v.read_text() != text:
        cluster_v.write_text(text)
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({
        "config": config.to_dict(),
        "devices": devices,
        "kernel": {"module": KERNEL, "file": kernel_v.name},
        "cluster": {"module": CLUSTER, "file": cluster_v.name},
        "regmap": regmap(config).to_dict(),
    }, indent=2) + "\n")
    return [kernel_v, cluster_v, manifest]
