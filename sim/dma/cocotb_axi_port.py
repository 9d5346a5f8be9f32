"""cocotb tests of `AxiPort` against cocotbext-axi's `AxiRam`.

The case comes in TANDEM_DMA_CASE (JSON): seed, runs (per client), pause (the probability that
each AXI channel and each client stream stalls in a cycle); optional corrupt, a read beat
(counted over all clients) received with one flipped bit (the negative test). A monitor
checks every address beat against the AXI4 rules the port promises (beat-aligned, INCR, at
most `max_burst` beats, never across a 4 KB boundary) and records how many bursts were in
flight at once.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.triggers import First, ReadOnly, RisingEdge, Timer
from cocotbext.axi import AxiBus, AxiRam

from sim.dma.top import PARAMS
from sim.streams import PayloadBus, PayloadSink, PayloadSource, PayloadTransaction, pauses
from sim.tb import TB

BEAT = PARAMS["data_width"] // 8
ADDR_BITS = PARAMS["addr_width"]
RAM_BYTES = 1 << 20
READ_REGION = RAM_BYTES // 2  # reads below, writes above: reads always see the initial data


def high(signal) -> bool:
    """The signal is a resolved 1 (X and Z read as low: inputs are undriven before reset)."""
    return str(signal.value) == "1"


class Monitor:
    """Checks AR and AW against the AXI4 rules and counts bursts in flight."""

    def __init__(self, dut):
        self.dut = dut
        self.errors: list[str] = []
        self.reads_in_flight = self.max_reads_in_flight = 0
        self.writes_in_flight = self.max_writes_in_flight = 0
        self.bursts = 0
        cocotb.start_soon(self._run())

    def _check(self, kind: str, addr: int, length: int, size: int, burst: int) -> None:
        beats = length + 1
        if addr % BEAT:
            self.errors.append(f"{kind} address {addr:#x} is not beat-aligned")
        if beats > PARAMS["max_burst"]:
            self.errors.append(f"{kind} burst of {beats} beats exceeds {PARAMS['max_burst']}")
        if addr // 4096 != (addr + beats * BEAT - 1) // 4096:
            self.errors.append(f"{kind} burst at {addr:#x} of {beats} beats crosses 4 KB")
        if size != BEAT.bit_length() - 1 or burst != 1:
            self.errors.append(f"{kind} size {size} burst {burst}: expected full-width INCR")

    async def _run(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if high(dut.rst):
                continue
            if high(dut.bus__arvalid) and high(dut.bus__arready):
                self._check("AR", int(dut.bus__araddr.value), int(dut.bus__arlen.value),
                            int(dut.bus__arsize.value), int(dut.bus__arburst.value))
                self.reads_in_flight += 1
                self.bursts += 1
            if high(dut.bus__rvalid) and high(dut.bus__rready) and high(dut.bus__rlast):
                self.reads_in_flight -= 1
            if high(dut.bus__awvalid) and high(dut.bus__awready):
                self._check("AW", int(dut.bus__awaddr.value), int(dut.bus__awlen.value),
                            int(dut.bus__awsize.value), int(dut.bus__awburst.value))
                self.writes_in_flight += 1
                self.bursts += 1
            if high(dut.bus__bvalid) and high(dut.bus__bready):
                self.writes_in_flight -= 1
            self.max_reads_in_flight = max(self.max_reads_in_flight, self.reads_in_flight)
            self.max_writes_in_flight = max(self.max_writes_in_flight, self.writes_in_flight)


class AxiPortTB(TB):
    """The port under test with an `AxiRam` on its AXI4 side and a stream model on every
    client stream; `pause` thins every one of their handshakes."""

    def __init__(self, dut, seed: int, pause: float, corrupt: int | None = None):
        super().__init__(dut)
        self.rng = random.Random(seed)
        # the RAM model drives these only once reset ends; the port must not see X before
        inputs = [f"bus__{name}" for name in ("awready", "wready", "bvalid", "arready", "rvalid")]
        inputs += [f"read_req__{k}__valid" for k in range(PARAMS["readers"])]
        inputs += [f"read_data__{k}__ready" for k in range(PARAMS["readers"])]
        for name in (*inputs, "write_req__valid", "write_data__valid"):
            getattr(dut, name).value = 0
        self.ram = self.add(AxiRam(AxiBus.from_prefix(dut, "bus_"), dut.clk, dut.rst,
                                   size=RAM_BYTES))
        self.readers = [self.add(PayloadSource(PayloadBus.from_prefix(dut, f"read_req__{k}_"),
                                               dut.clk, dut.rst))
                        for k in range(PARAMS["readers"])]
        self.data = [self.add(PayloadSink(PayloadBus.from_prefix(dut, f"read_data__{k}_"),
                                          dut.clk, dut.rst))
                     for k in range(PARAMS["readers"])]
        self.write_req = self.add(PayloadSource(PayloadBus.from_prefix(dut, "write_req_"),
                                                dut.clk, dut.rst))
        self.write_data = self.add(PayloadSource(PayloadBus.from_prefix(dut, "write_data_"),
                                                 dut.clk, dut.rst))
        if pause:
            channels = [self.ram.write_if.aw_channel, self.ram.write_if.w_channel,
                        self.ram.write_if.b_channel, self.ram.read_if.ar_channel,
                        self.ram.read_if.r_channel, *self.readers, *self.data,
                        self.write_req, self.write_data]
            for k, channel in enumerate(channels):
                channel.set_pause_generator(pauses(random.Random(seed * 97 + k), pause))
        self.monitor = Monitor(dut)
        self.write_done = 0
        self.corrupt = corrupt  # negative test: flip bit 0 of this read beat (over all clients)
        self.beats_read = 0
        cocotb.start_soon(self._count_done())

    async def _count_done(self):
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            if not high(self.dut.rst) and high(self.dut.write_done):
                self.write_done += 1

    @staticmethod
    def request(addr: int, beats: int) -> PayloadTransaction:
        return PayloadTransaction(payload=addr | beats << ADDR_BITS)

    async def read_run(self, client: int, addr: int, beats: int) -> bytes:
        """Ask for a run and collect its beats; checks `last` on exactly the final beat."""
        await self.readers[client].send(self.request(addr, beats))
        out = bytearray()
        for k in range(beats):
            beat = await self.data[client].recv()
            value = int(beat.payload) ^ (self.beats_read == self.corrupt)
            self.beats_read += 1
            last = value >> PARAMS["data_width"] & 1
            assert last == (k == beats - 1), (
                f"client {client}: beat {k} of {beats} at {addr:#x} has last={last}")
            out += (value & ((1 << PARAMS["data_width"]) - 1)).to_bytes(BEAT, "little")
        return bytes(out)

    def random_run(self, base: int, span: int, max_beats: int) -> tuple[int, int]:
        beats = self.rng.randint(1, max_beats)
        if self.rng.random() < 0.3:  # start just below a 4 KB boundary
            page = self.rng.randrange(base // 4096 + 1, (base + span) // 4096 - 1)
            addr = page * 4096 - BEAT * self.rng.randint(1, 8)
        else:
            addr = base + BEAT * self.rng.randrange((span - beats * BEAT) // BEAT)
        return addr, beats


async def _wait_writes(tb: AxiPortTB, runs: int, cycles: int) -> None:
    for _ in range(cycles):
        await RisingEdge(tb.dut.clk)
        if tb.write_done == runs and not high(tb.dut.writes_pending):
            return
    raise AssertionError(f"{tb.write_done} of {runs} write runs done after {cycles} cycles")


@cocotb.test()
async def random_reads_and_writes(dut):
    """Two read clients and the write client at once, random runs, random stalls everywhere:
    every byte read equals the RAM's, every strobed byte written lands, nothing else changes."""
    case = json.loads(os.environ["TANDEM_DMA_CASE"])
    tb = AxiPortTB(dut, case["seed"], case["pause"], case.get("corrupt"))
    initial = bytes(tb.rng.getrandbits(8) for _ in range(RAM_BYTES))
    tb.ram.write(0, initial)
    await tb.reset(cycles=4, settle=2)
    model = bytearray(initial)

    async def client(k: int) -> int:
        for _ in range(case["runs"]):
            addr, beats = tb.random_run(0, READ_REGION, 70)
            got = await tb.read_run(k, addr, beats)
            want = initial[addr:addr + beats * BEAT]
            assert got == want, f"client {k}: run at {addr:#x} of {beats} beats differs"
        return case["runs"]

    async def writer() -> int:
        for _ in range(case["runs"]):
            addr, beats = tb.random_run(READ_REGION, RAM_BYTES - READ_REGION, 40)
            await tb.write_req.send(tb.request(addr, beats))
            for k in range(beats):
                data = tb.rng.getrandbits(8 * BEAT)
                strb = (1 << BEAT) - 1 if tb.rng.random() < 0.6 else tb.rng.getrandbits(BEAT)
                await tb.write_data.send(PayloadTransaction(payload=data | strb << 8 * BEAT))
                raw = data.to_bytes(BEAT, "little")
                for b in range(BEAT):
                    if strb >> b & 1:
                        model[addr + k * BEAT + b] = raw[b]
        return case["runs"]

    tasks = [cocotb.start_soon(client(k)) for k in range(PARAMS["readers"])]
    tasks.append(cocotb.start_soon(writer()))
    for task in tasks:
        done = await First(task, Timer(case["timeout_us"], unit="us"))
        assert done == case["runs"], "traffic did not finish in time"
    await _wait_writes(tb, case["runs"], 20_000)
    assert not tb.monitor.errors, "; ".join(tb.monitor.errors[:5])
    assert not high(dut.error), "the port saw an error response"
    got = tb.ram.read(0, RAM_BYTES)
    bad = [i for i in range(READ_REGION, RAM_BYTES) if got[i] != model[i]]
    assert not bad, f"{len(bad)} bytes differ after the writes, first at {bad[0]:#x}"
    assert got[:READ_REGION] == initial[:READ_REGION], "a write landed in the read region"
    dut._log.info("%d bursts; at most %d reads and %d writes in flight", tb.monitor.bursts,
                  tb.monitor.max_reads_in_flight, tb.monitor.max_writes_in_flight)
    assert tb.monitor.max_reads_in_flight >= 2
    assert tb.monitor.max_writes_in_flight >= 2


@cocotb.test()
async def long_read_streams_back_to_back(dut):
    """Without stalls, a 512-beat run arrives at one beat per cycle after the first: the port
    keeps several bursts in flight, so the RAM's per-burst latency is hidden."""
    tb = AxiPortTB(dut, 5, 0.0)
    await tb.reset(cycles=4, settle=2)
    beats = 512
    task = cocotb.start_soon(tb.read_run(0, 4096, beats))
    while not (high(dut.bus__rvalid) and high(dut.bus__rready)):
        await RisingEdge(dut.clk)
    first = cocotb.utils.get_sim_time("ns")
    await task
    cycles = (cocotb.utils.get_sim_time("ns") - first) / 10
    dut._log.info("%d beats in %d cycles after the first", beats, cycles)
    assert cycles <= beats + 8, f"{beats} beats took {cycles} cycles"
    assert tb.monitor.max_reads_in_flight >= 2
