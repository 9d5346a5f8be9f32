"""A `pynq` module over the simulated card: the part of PYNQ's API a driver of an Alveo kernel
uses (`Overlay`, `Device.devices`, `allocate`, the IP's `read` / `write`, a buffer's
`device_address` / `sync_to_device` / `sync_from_device` / `freebuffer`), answered by a live
cocotb simulation of the kernel's Verilog (`card.SimCard`), in the manner of cocotbpynq.

Pass this module where a driver takes its `pynq` module; the driver then runs unchanged. Its
calls must come from a thread started by `cocotb.task.bridge` (`cocotb_pynq` does that): a register
access blocks that thread on `cocotb.task.resume` while the AXI4-Lite master carries it out in
simulated time; buffer syncs copy between the host array and the bank's memory while the
simulation waits, as a DMA while the kernel is idle.

An "xclbin" here is the JSON file `xclbin.write_xclbin` makes beside the kernel.xml and
link.cfg that `hw.vitis` generates: `Overlay` reads those two as PYNQ reads the sections of a
real xclbin (the kernel's arguments and offsets; which bank each port is connected to).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import ClassVar

import numpy as np
from cocotb.task import resume

from hw.vitis import port_banks

from .card import SimBank, SimCard

__all__ = ["DefaultIP", "Device", "Overlay", "PynqBuffer", "allocate", "attach", "detach"]

_card: SimCard | None = None


def attach(card: SimCard) -> None:
    """Make `card` the machine this module drives (its kernels become `Device.devices`)."""
    global _card
    _card = card
    Device.devices = [Device(d) for d in range(card.devices)]
    Device.active_device = Device.devices[0]


def detach() -> None:
    global _card
    _card = None
    Device.devices = []
    Device.active_device = None


def _the_card() -> SimCard:
    if _card is None:
        raise RuntimeError("no simulated card is attached (run the driver through "
                           "sim.pynq.run_jobs)")
    return _card


class Device:
    """One card, as `pynq.Device.devices` lists them."""

    devices: ClassVar[list[Device]] = []
    active_device: ClassVar[Device | None] = None

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"tandem simulated card {index}"

    def __repr__(self) -> str:
        return f"<Device {self.name}>"


class PynqBuffer(np.ndarray):
    """A host array with a twin in device memory, as `pynq.allocate` returns it."""

    def __array_finalize__(self, obj) -> None:
        self.device_address = getattr(obj, "device_address", None)
        self._bank = getattr(obj, "_bank", None)
        self._offset = getattr(obj, "_offset", None)

    @property
    def physical_address(self) -> int:
        return self.device_address

    def _span(self) -> tuple[SimBank, int, int]:
        if self._bank is None:
            raise RuntimeError("this buffer is freed, or a view that is not a whole buffer")
        return self._bank, self._offset, self.nbytes

    def sync_to_device(self) -> None:
        bank, offset, n = self._span()
        bank.mem[offset: offset + n] = np.ascontiguousarray(self).view(np.uint8).tobytes()

    def sync_from_device(self) -> None:
        bank, offset, n = self._span()
        data = np.frombuffer(bank.mem[offset: offset + n], np.uint8)
        self.reshape(-1).view(np.uint8)[:] = data

    def flush(self) -> None:
        self.sync_to_device()

    def invalidate(self) -> None:
        self.sync_from_device()

    def freebuffer(self) -> None:
        if self._bank is not None:
            self._bank.free(self._offset)
        self._bank = None

    def close(self) -> None:
        self.freebuffer()


class _Memory:
    """A memory bank of a downloaded overlay (`overlay.HBM3`), the `target` of `allocate`."""

    def __init__(self, device: int, bank: SimBank, name: str) -> None:
        self.device = device
        self.bank = bank
        self.name = name


def allocate(shape, dtype="u4", target: _Memory | None = None, **_) -> PynqBuffer:
    """A buffer in `target`'s bank (PYNQ's default bank without one is not modelled)."""
    if target is None:
        raise ValueError("the simulated card needs allocate(..., target=overlay.<bank>)")
    host = np.zeros(shape, dtype)
    offset = target.bank.alloc(max(1, host.nbytes))
    buf = host.view(PynqBuffer)
    buf._bank, buf._offset = target.bank, offset
    buf.device_address = target.bank.base + offset
    return buf


class DefaultIP:
    """A kernel's register window: 32-bit `read` / `write` at byte offsets."""

    def __init__(self, device: int, description: dict) -> None:
        self.device = device
        self.description = description
        #: (offset, value) of every register write, in order (for tests of a driver)
        self.writes: list[tuple[int, int]] = []

    def read(self, offset: int = 0) -> int:
        _check_offset(offset)
        return resume(_the_card().read)(self.device, offset)

    def write(self, offset: int, value: int) -> None:
        _check_offset(offset)
        if not 0 <= int(value) < 1 << 32:
            raise ValueError(f"register values are 32-bit, not {value:#x}")
        self.writes.append((offset, int(value)))
        resume(_the_card().write)(self.device, offset, int(value))


def _check_offset(offset: int) -> None:
    if offset % 4:
        raise ValueError(f"register offsets are word aligned, not {offset:#x}")


def _kernel_registers(kernel_xml: str) -> tuple[str, dict]:
    kernel = ET.fromstring(kernel_xml).find("kernel")
    registers = {}
    for arg in kernel.find("args"):
        if arg.get("addressQualifier") not in ("0", "1"):
            continue  # streams have no register
        registers[arg.get("name")] = {
            "address_offset": int(arg.get("offset"), 16),
            "size": 8 * int(arg.get("size"), 16),
            "access": "read-write",
            "id": int(arg.get("id")),
            "type": arg.get("type"),
            "memory": arg.get("port") if arg.get("addressQualifier") == "1" else None,
            "description": "",
            "fields": {},
        }
    return kernel.get("name"), registers


class Overlay:
    """`pynq.Overlay(xclbin, device=...)`: loads the card's xclbin (resets the kernel) and
    exposes its compute unit in `ip_dict` and its memory banks in `mem_dict`, each also as an
    attribute (`overlay.tandem_1`, `overlay.HBM0`)."""

    def __init__(self, xclbin: str | Path, download: bool = True, device: Device | None = None,
                 **_) -> None:
        card = _the_card()
        path = Path(xclbin)
        if not path.is_file():
            raise OSError(f"{path} does not exist")
        meta = json.loads(path.read_text())
        if meta.get("format") != "tandem-sim-xclbin":
            raise RuntimeError(f"{path} is not an xclbin of the simulated card")
        self.device = device or Device.active_device
        d = self.device.index
        name, registers = _kernel_registers((path.parent / meta["kernel_xml"]).read_text())
        cu = f"{name}_1"
        banks = port_banks((path.parent / meta["link_cfg"]).read_text(), cu)
        binding = {}
        for port, bank in banks.items():
            m = re.fullmatch(r"m_axi_hbm(\d+)", port)
            b = re.fullmatch(r"HBM\[(\d+)\]", bank)
            if not m or not b:
                raise RuntimeError(f"the simulated card cannot connect {port} to {bank}")
            binding[int(m.group(1))] = int(b.group(1))
        if download:
            card.binding[d] = binding
            resume(card.reset)()
        self.bitfile_name = str(path)
        self.ip_dict = {cu: {"fullpath": cu, "type": meta["vlnv"], "phys_addr": 0,
                             "addr_range": meta["control_bytes"], "registers": registers,
                             "device": self.device}}
        self.mem_dict = {}
        for k in range(card.banks_per_card):
            bank_base = card.bank_address(k)
            self.mem_dict[f"HBM{k}"] = {"type": "MEM_HBM", "base_address": bank_base,
                                        "size": card.bank_bytes, "used": int(k in
                                                                             binding.values()),
                                        "raw_type": 0}
        self._ips = {cu: DefaultIP(d, self.ip_dict[cu])}

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._ips:
            return self._ips[name]
        if name in self.mem_dict:
            k = int(name[3:])
            return _Memory(self.device.index, _the_card().bank(self.device.index, k), name)
        raise AttributeError(f"overlay has no IP or memory {name!r}")

    def free(self) -> None:
        pass
