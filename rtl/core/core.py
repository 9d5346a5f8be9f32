"""`Core`: one accelerator (one FPGA): the controller, the vector buffer, the engines and one
AXI4 manager per HBM port.

A run: `start` (a pulse) drops weights a previous run prefetched but never used, the loader
copies `program_words` instructions from
`program` (through port 0) into the instruction memory, the controller runs them from pc 0, and
`done` pulses when HALT has retired everything. `cycles` counts the run's cycles, `fault` and
`fault_pc` say why it stopped early if it did. The vector buffer and HBM keep their contents.

Port clients: each AXI port serves the DMA engine, the prefetch stream and the direct stream of
the MPU (and on port 0 the loader). Vector buffer ports by priority: reads MPU, VPU a/b/c, ring,
then the DMA ports; writes MPU, VPU, ring, then the DMA ports.

`trace_issue`/`trace_issue_pc` and `trace_retire`/`trace_retire_pc` report each instruction's
issue and completion, for the cycle-by-cycle comparison with the timing model.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from hw.isa import WORD_BITS

from ..axi import axi4_signature, axis_signature
from ..axi_port import AxiPort
from .controller import Controller
from .dma import Dma
from .mpu import Mpu
from .ring import FLIT_USER, Ring
from .scalar import ScalarUnit
from .vbuf import Vbuf
from .vpu import Vpu

__all__ = ["ADDR_WIDTH", "RETIRE_LANES", "Core", "vbuf_banks"]

ADDR_WIDTH = 64
#: Completion reports per cycle: DMA, MPU (MM, PREFETCH), VPU (vector, reduction), scalar, ring.
RETIRE_LANES = 7


def vbuf_banks(cfg: AccelConfig) -> int:
    """Banks of the vector buffer: twice the DMA's ports, at least 16."""
    return max(16, 2 * cfg.hbm_ports)


class Core(wiring.Component):
    def __init__(self, cfg: AccelConfig, *, max_tokens: int = 128):
        self.cfg = cfg
        self.max_tokens = max_tokens
        self.pc_bits = max(1, (cfg.imem_words - 1).bit_length())
        width = cfg.hbm_port_width_bits
        super().__init__({
            "start": In(1),
            "program": In(ADDR_WIDTH),
            "program_words": In(self.pc_bits + 1),
            "device": In(8),
            "devices": In(8),
            "hbm_base": In(ADDR_WIDTH).array(cfg.hbm_ports),
            "hbm": Out(axi4_signature(ADDR_WIDTH, width)).array(cfg.hbm_ports),
            "ring_tx": Out(axis_signature(16 * cfg.align, FLIT_USER.size)),
            "ring_rx": In(axis_signature(16 * cfg.align, FLIT_USER.size)),
            "running": Out(1),
            "done": Out(1),
            "cycles": Out(64),
            "fault": Out(8),
            "fault_pc": Out(16),
            "trace_issue": Out(1),
            "trace_issue_pc": Out(self.pc_bits),
            "trace_retire": Out(RETIRE_LANES),
            "trace_retire_pc": Out(self.pc_bits).array(RETIRE_LANES),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        P = cfg.hbm_ports

        def add(name, unit):
            m.submodules[name] = unit
            return unit

        ctrl = Controller(cfg, max_tokens=self.max_tokens)
        add("controller", ctrl)
        uop = ctrl.uop
        bb, sbe = ctrl.block_bits, ctrl.sb_entries
        dma = add("dma", Dma(cfg, uop, block_bits=bb, sb_entries=sbe, addr_width=ADDR_WIDTH))
        mpu = add("mpu", Mpu(cfg, uop, block_bits=bb, sb_entries=sbe, addr_width=ADDR_WIDTH,
                             max_tokens=self.max_tokens))
        vpu = add("vpu", Vpu(cfg, uop, block_bits=bb, sb_entries=sbe))
        scalar = add("scalar", ScalarUnit(uop))
        ring = add("ring", Ring(cfg, uop, block_bits=bb, sb_entries=sbe))
        vbuf = Vbuf(words=cfg.vbuf_words, align=cfg.align, banks=vbuf_banks(cfg),
                    readers=5 + P, writers=3 + P)
        m.submodules.vbuf = vbuf  # memory only: nothing to clear

        # controller <-> engines
        for name, unit in (("dma", dma), ("mpu", mpu), ("vpu", vpu), ("scalar", scalar),
                           ("ring", ring)):
            wiring.connect(m, getattr(ctrl, f"to_{name}"), unit.uop)
        wiring.connect(m, ctrl.to_pref, mpu.pref)
        m.d.comb += [
            mpu.clear.eq(self.start),  # weights prefetched but never used by the last run
            ctrl.devices.eq(self.devices),
            ctrl.int_wb[0].eq(dma.int_wb), ctrl.int_wb[1].eq(vpu.int_wb),
            ctrl.int_wb[2].eq(ring.int_wb),
            ctrl.scalar_wb[0].eq(scalar.wb), ctrl.scalar_wb[1].eq(vpu.scalar_wb),
            ctrl.scalar_wb[2].eq(ring.scalar_wb),
            ctrl.release_reads.eq(dma.release_reads | mpu.release_reads | vpu.release_reads
                                  | ring.release_reads),
            ctrl.release_write.eq(dma.release_write | mpu.release_write | vpu.release_write
                                  | ring.release_write),
            ctrl.hbm_writes_pending.eq(dma.writes_pending),
            ctrl.engines_idle.eq(dma.idle & mpu.idle & vpu.idle & ring.idle),
            ring.device.eq(self.device), ring.devices.eq(self.devices),
        ]
        for p in range(P):
            m.d.comb += [dma.hbm_base[p].eq(self.hbm_base[p]),
                         mpu.hbm_base[p].eq(self.hbm_base[p])]

        # vector buffer ports
        reads = [mpu.read, vpu.read[0], vpu.read[1], vpu.read[2], ring.read,
                 *[dma.read[p] for p in range(P)]]
        writes = [mpu.write, vpu.write, ring.write, *[dma.write[p] for p in range(P)]]
        for k, port in enumerate(reads):
            wiring.connect(m, port, vbuf.read[k])
        for k, port in enumerate(writes):
            wiring.connect(m, port, vbuf.write[k])

        # ring links
        wiring.connect(m, ring.tx, wiring.flipped(self.ring_tx))
        wiring.connect(m, wiring.flipped(self.ring_rx), ring.rx)

        # AXI ports: DMA, prefetch stream, direct stream (+ loader on port 0)
        loader_words = Signal(WORD_BITS)
        for p in range(P):
            port = add(f"axi{p}", AxiPort(addr_width=ADDR_WIDTH,
                                          data_width=cfg.hbm_port_width_bits,
                                          readers=4 if p == 0 else 3,
                                          max_burst=cfg.hbm_burst_beats, outstanding=8))
            wiring.connect(m, port.bus, wiring.flipped(self.hbm[p]))
            client = dma.axi[p]
            wiring.connect(m, client.read_req, port.read_req[0])
            wiring.connect(m, port.read_data[0], client.read_data)
            wiring.connect(m, client.write_req, port.write_req)
            wiring.connect(m, client.write_data, port.write_data)
            m.d.comb += client.write_done.eq(port.write_done)
            for k, streamer in ((1, mpu.axi_pref[p]), (2, mpu.axi_direct[p])):
                wiring.connect(m, streamer.read_req, port.read_req[k])
                wiring.connect(m, port.read_data[k], streamer.read_data)
            if p == 0:
                loader_port = port
        self._loader(m, loader_port, ctrl, loader_words)

        # run bookkeeping and trace
        cycles = Signal(64)
        with m.If(self.start):
            m.d.sync += cycles.eq(0)
        with m.Elif(self.running):
            m.d.sync += cycles.eq(cycles + 1)
        m.d.comb += [self.cycles.eq(cycles), self.fault.eq(ctrl.fault),
                     self.fault_pc.eq(ctrl.fault_pc), self.done.eq(ctrl.done),
                     self.trace_issue.eq(ctrl.issued), self.trace_issue_pc.eq(ctrl.issued_pc)]
        lanes = [(dma.retire, dma.retire_pc), (mpu.retire[0], mpu.retire_pc[0]),
                 (mpu.retire[1], mpu.retire_pc[1]), (vpu.retire[0], vpu.retire_pc[0]),
                 (vpu.retire[1], vpu.retire_pc[1]), (scalar.retire, scalar.retire_pc),
                 (ring.retire, ring.retire_pc)]
        assert len(lanes) == RETIRE_LANES
        m.d.comb += self.trace_retire.eq(Cat(v for v, _ in lanes))
        for k, (_, pc) in enumerate(lanes):
            m.d.comb += self.trace_retire_pc[k].eq(pc)
        return m

    def _loader(self, m: Module, port: AxiPort, ctrl: Controller, word: Signal) -> None:
        """Copy the program into the instruction memory, then start the controller."""
        cfg = self.cfg
        beat_bits = cfg.hbm_port_width_bits
        loading = Signal()
        asked = Signal()
        addr = Signal(self.pc_bits + 1)
        req = port.read_req[3]
        beat = port.read_data[3]
        total_bytes = self.program_words << 5
        m.d.comb += [req.payload.addr.eq(self.program),
                     req.payload.beats.eq((total_bytes + cfg.beat_bytes - 1)
                                          >> (cfg.beat_bytes.bit_length() - 1)),
                     req.valid.eq(loading & ~asked & (self.program_words != 0))]
        with m.If(req.valid & req.ready):
            m.d.sync += asked.eq(1)
        go = Signal()
        if beat_bits >= WORD_BITS:  # a beat holds `per` instructions: one write per cycle
            per = beat_bits // WORD_BITS
            sub = Signal(range(max(per, 2)))
            m.d.comb += [ctrl.imem_write.en.eq(loading & beat.valid
                                               & (addr < self.program_words)),
                         ctrl.imem_write.addr.eq(addr),
                         ctrl.imem_write.data.eq(beat.payload.data.word_select(sub, WORD_BITS)),
                         beat.ready.eq(loading & (sub == per - 1))]
            with m.If(loading & beat.valid):
                m.d.sync += [addr.eq(addr + 1), sub.eq(Mux(sub == per - 1, 0, sub + 1))]
                with m.If((sub == per - 1) & beat.payload.last):
                    m.d.comb += go.eq(1)
        else:  # `per` beats make one instruction
            per = WORD_BITS // beat_bits
            part = Signal(range(max(per, 2)))
            shift = Signal(WORD_BITS - beat_bits)
            m.d.comb += beat.ready.eq(loading)
            with m.If(loading & beat.valid):
                m.d.sync += [part.eq(part + 1), shift.eq(Cat(shift[beat_bits:],
                                                             beat.payload.data))]
                with m.If(part == per - 1):
                    m.d.sync += [part.eq(0), addr.eq(addr + 1)]
                    m.d.comb += [ctrl.imem_write.en.eq(1),
                                 ctrl.imem_write.addr.eq(addr),
                                 ctrl.imem_write.data.eq(Cat(shift, beat.payload.data))]
                    with m.If(beat.payload.last):
                        m.d.comb += go.eq(1)
        with m.If(self.start):
            m.d.sync += [loading.eq(self.program_words != 0), asked.eq(0), addr.eq(0)]
        with m.If(go):
            m.d.sync += loading.eq(0)
        started = Signal()
        m.d.sync += started.eq(go | (self.start & (self.program_words == 0)))
        m.d.comb += [ctrl.start.eq(started), ctrl.program_words.eq(self.program_words)]
        running = Signal()
        with m.If(self.start):
            m.d.sync += running.eq(1)
        with m.If(ctrl.done):
            m.d.sync += running.eq(0)
        m.d.comb += self.running.eq(running)
