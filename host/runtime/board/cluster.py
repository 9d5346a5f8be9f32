"""`BoardCluster`: the kernels on Alveo U280 / U55C cards, driven through PYNQ, behind the same
device protocol as `IsaCluster` and `RtlCluster`.

Per card (`pynq.Device.devices[d]`) it loads the xclbin (`pynq.Overlay(xclbin, device=...)`),
finds the compute unit `tandem_1`, and allocates one buffer per HBM port in the bank that the
build's connectivity binds the port to (`hw.vitis.port_banks` of the link.cfg beside the
xclbin, or of `hw.vitis.connectivity_cfg` for the config when there is none). A run copies the
host's images into the buffers (the program into port 0's buffer above the image, at
`program_offset`, as `RtlCluster` places it), writes every argument of `hw.regmap` (buffer
addresses, program address and length, ring position), sets ap_start on every card, polls
ap_done until all are done or `timeout_s` passes, reads the `cycles` and `fault` status
registers, and copies the buffers back into the host's images.

The cards run the whole job without the host, so the TOKOUT `events` are read from memory
after the run (the output tokens at `tokens_at`, N_OUT of them), each with the run's measured
cycles; there is no per-token timing on a board.

`pynq` is the module to drive the cards with: PYNQ itself (imported when first needed) or a
module with its API (`sim.pynq.api`, the simulated card the tests use). Nothing else in this
file knows which one it has.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from hw.config import AccelConfig
from hw.hbm import HbmImage
from hw.isa import Instr, encode_program
from hw.layout import DESC
from hw.regmap import Register, regmap
from hw.vitis import KERNEL_NAME, connectivity_cfg, port_banks

from ..host_images import HostImages

__all__ = ["BoardCluster", "BoardDevice", "BoardError", "import_pynq", "pynq_bank"]

class BoardError(RuntimeError):
    """A card could not be opened, did not finish, faulted, or its xclbin does not match."""


def import_pynq() -> ModuleType:
    """PYNQ, or a BoardError that says how to get it."""
    try:
        import pynq
    except ImportError:
        raise BoardError("the board backend needs PYNQ on the machine with the Alveo card: "
                         "pip install 'tandem[board]' (PYNQ pins numpy<2; use its own "
                         "environment)") from None
    return pynq


def pynq_bank(bank: str) -> str:
    """PYNQ's name of a connectivity bank: `HBM[3]` -> `HBM3`."""
    m = re.fullmatch(r"([A-Za-z]+)\[(\d+)\]", bank)
    if not m:
        raise BoardError(f"cannot name memory bank {bank!r} for PYNQ (expected e.g. HBM[3])")
    return f"{m.group(1)}{m.group(2)}"


@dataclass
class BoardDevice:
    """One card: its program, its buffers and the results of its last run."""

    index: int
    program: list[Instr]
    events: list[tuple[int, int, dict]] = field(default_factory=list)
    argmax_inputs: list | None = None
    argmax_pc: int | None = None  #: unused: only the `isa` simulator records logits
    cycles: int = 0  #: the kernel's `cycles` register after the last run
    overlay: Any = None
    ip: Any = None
    buffers: list = field(default_factory=list)  #: one per HBM port
    banks: list[str] = field(default_factory=list)  #: PYNQ bank name per port


class BoardCluster(HostImages):
    """The `board` backend's devices (see the module doc)."""

    kind = "board"

    def __init__(self, config: AccelConfig, xclbin: str | Path, *,
                 pynq: ModuleType | None = None, link_cfg: str | Path | None = None,
                 timeout_s: float = 60.0, poll_s: float = 1e-4, tokens_at: int | None = None,
                 buffer_bytes: int | None = None) -> None:
        self.config = config
        self.xclbin = Path(xclbin)
        self._pynq = pynq
        self.link_cfg = link_cfg
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        #: byte offset of the output tokens in port 0 (the job descriptor's), for `events`
        self.tokens_at = tokens_at
        #: bytes of each port's buffer: the whole channel the compiler's layout may use
        self.buffer_bytes = buffer_bytes or config.hbm_channel_bytes
        self.regmap = regmap(config)
        self.devices: list[BoardDevice] = []
        self.images: list[HbmImage] = []
        self._opened = False

    # -- Device protocol -------------------------------------------------------------------

    def load(self, programs: list[list[Instr]], images: list[HbmImage] | None) -> None:
        self.close()
        self._load(programs, images, BoardDevice)

    def start(self) -> None:
        for dev in self.devices:
            dev.events = []

    def wait(self) -> None:
        for _ in self.run():
            pass

    def counters(self) -> dict:
        return {"cycles": max(dev.cycles for dev in self.devices),
                "cycles_per_device": [dev.cycles for dev in self.devices]}

    # -- the cards -------------------------------------------------------------------------

    @property
    def pynq(self) -> ModuleType:
        if self._pynq is None:
            self._pynq = import_pynq()
        return self._pynq

    def port_banks(self) -> list[str]:
        """The connectivity bank of every port (`HBM[k]`), in port order."""
        if self.link_cfg is not None:
            # a path, or the text itself
            if isinstance(self.link_cfg, str) and "\n" in self.link_cfg:
                text = self.link_cfg
            else:
                text = Path(self.link_cfg).read_text()
        elif (self.xclbin.parent / "link.cfg").is_file():
            text = (self.xclbin.parent / "link.cfg").read_text()
        else:
            text = connectivity_cfg(self.config)
        banks = port_banks(text, f"{KERNEL_NAME}_1")
        missing = [p for p in range(self.config.hbm_ports) if f"m_axi_hbm{p}" not in banks]
        if missing:
            raise BoardError(f"the connectivity binds no bank to m_axi_hbm{missing[0]} of "
                             f"{KERNEL_NAME}_1 (config {self.config.name!r} has "
                             f"{self.config.hbm_ports} ports)")
        return [banks[f"m_axi_hbm{p}"] for p in range(self.config.hbm_ports)]

    def open(self) -> None:
        """Load the xclbin on every card and allocate the buffers (once)."""
        if self._opened:
            return
        pynq = self.pynq
        if not self.xclbin.is_file():
            raise BoardError(f"no xclbin at {self.xclbin}; build one with `python -m hw.vitis "
                             f"--config {self.config.name} --out DIR` and DIR/build.sh")
        cards = list(pynq.Device.devices)
        if len(cards) < len(self.devices):
            raise BoardError(f"{len(self.devices)} devices need as many cards; PYNQ sees "
                             f"{len(cards)}")
        banks = [pynq_bank(b) for b in self.port_banks()]
        for dev, card in zip(self.devices, cards, strict=False):
            dev.overlay = pynq.Overlay(str(self.xclbin), device=card)
            cu = self._compute_unit(dev.overlay)
            dev.ip = getattr(dev.overlay, cu)
            self._check_registers(dev.overlay.ip_dict[cu], dev.index)
            dev.banks = banks
            for p, bank in enumerate(banks):
                if bank not in dev.overlay.mem_dict:
                    raise BoardError(f"the xclbin on card {dev.index} has no memory bank {bank}"
                                     f" for m_axi_hbm{p}; banks: {', '.join(dev.overlay.mem_dict)}")
                dev.buffers.append(pynq.allocate((self.buffer_bytes,), np.uint8,
                                                 target=getattr(dev.overlay, bank)))
        self._opened = True

    def close(self) -> None:
        """Free the buffers (the overlays stay loaded)."""
        for dev in self.devices:
            for buf in dev.buffers:
                buf.freebuffer()
            dev.buffers = []
        self._opened = False

    def _compute_unit(self, overlay) -> str:
        want = f"{KERNEL_NAME}_1"
        if want in overlay.ip_dict:
            return want
        raise BoardError(f"the xclbin has no compute unit {want}; it has "
                         f"{', '.join(overlay.ip_dict) or 'none'}")

    def _check_registers(self, description: dict, device: int) -> None:
        """The xclbin's kernel must have this register map's argument offsets."""
        xclbin_regs = description.get("registers") or {}
        for reg in self.regmap.args:
            got = xclbin_regs.get(reg.name, {}).get("address_offset")
            if got is not None and got != reg.offset:
                raise BoardError(f"card {device}: the xclbin's kernel has argument {reg.name} at "
                                 f"{got:#x}, this build's register map at {reg.offset:#x}; "
                                 "rebuild the xclbin for this config")

    def _write(self, ip, reg: Register, value: int) -> None:
        for word in range(reg.words):
            ip.write(reg.offset + 4 * word, (value >> (32 * word)) & 0xFFFFFFFF)

    def _read(self, ip, reg: Register) -> int:
        return sum(ip.read(reg.offset + 4 * word) << (32 * word) for word in range(reg.words))

    def _bit(self, register: str, name: str) -> int:
        return next(1 << f.lsb for f in self.regmap[register].fields if f.name == name)

    def _field(self, register: str, name: str, value: int) -> int:
        f = next(f for f in self.regmap[register].fields if f.name == name)
        return value >> f.lsb & ((1 << f.width) - 1)

    def _upload(self, dev: BoardDevice) -> int:
        """Copy the image and the program into the card's buffers; returns the program's
        offset in port 0's buffer."""
        image = self.images[dev.index]
        offset = self.program_offset(dev.index)
        words = encode_program(dev.program).view(np.uint8).reshape(-1)
        for p, buf in enumerate(dev.buffers):
            data = image.channels[p][:image.used_bytes(p)]
            end = offset + len(words) if p == 0 else len(data)
            if end > len(buf):
                raise BoardError(f"device {dev.index} port {p} needs {end} bytes; its buffer "
                                 f"has {len(buf)}")
            buf[:len(data)] = data
            buf[len(data):] = 0  # the cards' memory is not zero; the images are, beyond data
            if p == 0:
                buf[offset: offset + len(words)] = words
            buf.sync_to_device()
        return offset

    def run(self) -> Iterator[None]:
        self.open()
        rm = self.regmap
        ap_start, ap_done = self._bit("control", "ap_start"), self._bit("control", "ap_done")
        ap_idle = self._bit("control", "ap_idle")
        offsets = []
        for dev in self.devices:
            control = dev.ip.read(rm["control"].offset)
            if not control & ap_idle:
                raise BoardError(f"the kernel on card {dev.index} is busy (control "
                                 f"{control:#x}); reload the xclbin")
            offset = self._upload(dev)
            offsets.append(offset)
            args = {"program": dev.buffers[0].device_address + offset,
                    "program_words": len(dev.program), "device": dev.index,
                    "devices": len(self.devices),
                    **{f"hbm{p}": buf.device_address for p, buf in enumerate(dev.buffers)}}
            for name, value in args.items():
                self._write(dev.ip, rm[name], value)
        for dev in self.devices:
            self._write(dev.ip, rm["control"], ap_start)
        deadline = time.monotonic() + self.timeout_s
        waiting = set(range(len(self.devices)))
        while waiting:
            for d in sorted(waiting):
                if self.devices[d].ip.read(rm["control"].offset) & ap_done:
                    waiting.discard(d)
            if waiting and time.monotonic() > deadline:
                raise BoardError(f"timeout: the kernel on card(s) {sorted(waiting)} did not raise "
                                 f"ap_done within {self.timeout_s:g} s; reload the xclbin "
                                 "before the next run")
            if waiting and self.poll_s:
                time.sleep(self.poll_s)
        for dev, offset in zip(self.devices, offsets, strict=True):
            fault = self._read(dev.ip, rm["fault"])
            dev.cycles = self._read(dev.ip, rm["cycles"])
            code = self._field("fault", "code", fault)
            if code:
                raise BoardError(f"the kernel on card {dev.index} faulted: code {code} at pc "
                                 f"{self._field('fault', 'pc', fault)} (see rtl.core FAULTS)")
            image = self.images[dev.index]
            for p, buf in enumerate(dev.buffers):
                buf.sync_from_device()
                data = np.asarray(buf).view(np.uint8)[: offset if p == 0 else len(buf)]
                nz = np.flatnonzero(data)
                image.channels[p] = data[: int(nz[-1]) + 1 if len(nz) else 0].copy()
            dev.events = self._events(dev)
        yield

    def _events(self, dev: BoardDevice) -> list[tuple[int, int, dict]]:
        """The output tokens as TOKOUT events, read from memory after the run."""
        if self.tokens_at is None:
            return []
        n = int(self.read_i32(dev.index, DESC.N_OUT, 1)[0])
        tokens = self.read_i32(dev.index, self.tokens_at, n)
        return [(self.tokens_at + 4 * i, int(t), {"cycles": float(dev.cycles), "tokens": n})
                for i, t in enumerate(tokens)]
