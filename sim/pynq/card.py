"""The simulated card's cocotb side: the models a board puts around the kernel.

`SimCard` attaches, per kernel of the build (one per card), a cocotbext-axi `AxiLiteMaster` to
its `s_axi_control` slave (the host's register window over PCIe) and a cocotbext-axi RAM
(`AxiRamWrite` / `AxiRamRead`, the protocol models `AxiRam` is made of) to every `m_axi_hbm<k>`
master. A port's RAM answers from the memory of the HBM bank the downloaded xclbin's
connectivity binds it to; an access outside that bank is recorded as a violation (on a card it
would reach another bank or fail), and the run reports it. Bank memories start filled with
0xA5, as uninitialised HBM holds garbage rather than zeros.

`pauses=True` thins every AXI channel at random (seeded): the kernel sees back-pressure on its
requests and gaps in its read data.
"""

from __future__ import annotations

import logging
import mmap
import random

from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster
from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite

from hw.config import AccelConfig
from hw.intmath import round_up

from ..streams import pauses as pause_pattern
from ..tb import TB
from .top import control_prefix, hbm_prefix

__all__ = ["HBM_BASE", "SimBank", "SimCard", "bank_address"]

#: Address of HBM bank 0 in every card's device address space; bank k follows at k * bank bytes.
HBM_BASE = 1 << 36
#: What a bank holds before anything is written to it.
GARBAGE = 0xA5


def bank_address(bank: int, bank_bytes: int) -> int:
    return HBM_BASE + bank * bank_bytes


class SimBank:
    """One HBM pseudo-channel of a simulated card: `size` bytes at `base`."""

    def __init__(self, index: int, size: int) -> None:
        self.index = index
        self.size = size
        self.base = bank_address(index, size)
        self.mem = mmap.mmap(-1, size)
        self.mem.write(bytes([GARBAGE]) * size)
        self._next = 0  # bump allocator: offset of the next free byte
        self.live: dict[int, int] = {}  # offset -> bytes of every allocation not yet freed

    def alloc(self, nbytes: int, align: int = 4096) -> int:
        offset = round_up(self._next, align)
        if offset + nbytes > self.size:
            raise MemoryError(f"HBM bank {self.index} has {self.size - offset} bytes free, "
                              f"not {nbytes}")
        self._next = offset + nbytes
        self.live[offset] = nbytes
        return offset

    def free(self, offset: int) -> None:
        self.live.pop(offset, None)
        if not self.live:
            self._next = 0


class _BankRamWrite(AxiRamWrite):
    def __init__(self, card: SimCard, device: int, port: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.card, self.device, self.port = card, device, port

    async def _write(self, address, data):
        bank = self.card.resolve(self.device, self.port, address, len(data), "write")
        if bank is not None:
            bank.mem[address - bank.base: address - bank.base + len(data)] = bytes(data)


class _BankRamRead(AxiRamRead):
    def __init__(self, card: SimCard, device: int, port: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.card, self.device, self.port = card, device, port

    async def _read(self, address, length):
        bank = self.card.resolve(self.device, self.port, address, length, "read")
        if bank is None:
            return bytes(length)
        return bank.mem[address - bank.base: address - bank.base + length]


class SimCard(TB):
    """The bus models around every kernel of a card build (see the module doc). The clock
    starts and reset is held from construction; `reset` releases it, as loading an xclbin
    does."""

    def __init__(self, dut, config: AccelConfig, devices: int, bank_bytes: int,
                 banks: int = 32, pauses: bool = False, seed: int = 1,
                 period_ns: int = 10) -> None:
        super().__init__(dut, period_ns=period_ns)
        self.config = config
        self.devices = devices
        self.bank_bytes = bank_bytes
        self.banks_per_card = banks
        #: per device: bank index -> SimBank, created on first use
        self.banks: list[dict[int, SimBank]] = [{} for _ in range(devices)]
        #: per device: port -> bank index, from the downloaded xclbin's connectivity
        self.binding: list[dict[int, int]] = [{} for _ in range(devices)]
        self.violations: list[str] = []
        self.masters = [self.add(AxiLiteMaster(AxiLiteBus.from_prefix(dut, control_prefix(d)),
                                               dut.clk, dut.rst)) for d in range(devices)]
        self.rams = []
        rng = random.Random(seed)
        for d in range(devices):
            for p in range(config.hbm_ports):
                bus = AxiBus.from_prefix(dut, hbm_prefix(d, p))
                wr = _BankRamWrite(self, d, p, bus.write, dut.clk, dut.rst, size=4096)
                rd = _BankRamRead(self, d, p, bus.read, dut.clk, dut.rst, size=4096)
                if pauses:
                    for channel in (wr.aw_channel, wr.w_channel, wr.b_channel, rd.ar_channel,
                                    rd.r_channel):
                        channel.set_pause_generator(pause_pattern(random.Random(rng.random()),
                                                                  0.3))
                self.rams.append((self.add(wr), self.add(rd)))
        # per-transfer INFO logs cost more than the transfers
        for d in range(devices):
            names = [control_prefix(d), *(hbm_prefix(d, p) for p in range(config.hbm_ports))]
            for name in names:
                logging.getLogger(f"cocotb.{dut._name}.{name}").setLevel(logging.WARNING)

    def bank_address(self, index: int) -> int:
        return bank_address(index, self.bank_bytes)

    def bank(self, device: int, index: int) -> SimBank:
        if not 0 <= index < self.banks_per_card:
            raise ValueError(f"the card has HBM banks 0..{self.banks_per_card - 1}, not {index}")
        if index not in self.banks[device]:
            self.banks[device][index] = SimBank(index, self.bank_bytes)
        return self.banks[device][index]

    def resolve(self, device: int, port: int, address: int, length: int,
                what: str) -> SimBank | None:
        """The bank an m_axi access lands in, or None (recorded) when it leaves the bank the
        port is bound to."""
        index = self.binding[device].get(port)
        bank = None if index is None else self.bank(device, index)
        if bank is None or not (bank.base <= address
                                and address + length <= bank.base + bank.size):
            where = "no bank" if bank is None else f"HBM[{index}]"
            self.violations.append(f"device {device} m_axi_hbm{port} {what} of {length} bytes "
                                   f"at {address:#x}, outside its bank ({where})")
            return None
        return bank

    async def reset(self, cycles: int = 8, settle: int = 2) -> None:
        """Hold the kernels in reset, as loading an xclbin does."""
        await super().reset(cycles, settle)

    async def read(self, device: int, offset: int) -> int:
        return await self.masters[device].read_dword(offset)

    async def write(self, device: int, offset: int, value: int) -> None:
        await self.masters[device].write_dword(offset, value)

    async def idle(self, cycles: int) -> None:
        await self.cycles(cycles)

