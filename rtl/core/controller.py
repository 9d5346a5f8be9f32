"""`Controller`: fetch, decode, scoreboard and in-order issue, and the control instructions.

Two stages. Fetch reads the instruction memory (one 256-bit word per instruction); decode takes
the word apart with the decoder generated from `hw.isa` (`rtl.core.ops.decode_fields`) into a
register. Issue reads the registers (resolving indexed operands: immediate plus index
register), checks the hazards the timing model checks, and hands the micro-op to its engine:

- integer and scalar registers: an instruction waits while a register it reads, indexes with
  or writes has a write pending (set at issue, cleared by the engine's write-back);
- vector buffer: ranges against the `RangeScoreboard`. An instruction without ranges whose
  engine releases its entry when done (LDR, TOKOUT, ARGMAXALL, SYNC) holds an entry with an
  empty write range, which clashes with nothing, so that release cannot free an entry a later
  instruction has taken meanwhile;
- HBM: LOADR and direct MMs wait until no store is outstanding (the KV cache is written by
  STORER/STOREC and read back by LOADR-free attention MMs);
- the engine must be ready (an engine's `ready` never depends on `valid`).

Control instructions (LI, ADDI, ADD, SUB, MUL, MULI, MIN, branches, JMP, NOP) execute at
issue; their results are visible to the next instruction. A taken branch costs one bubble
(`BRANCH_PENALTY`). HALT stops fetching; the run is done once every engine is idle, every
scoreboard entry free and every store acknowledged.

Faults stop the run with a code (`FAULTS`) and the pc: an instruction outside the program, an
unknown opcode, a vector range outside the buffer, an operand the engines need aligned that is
not.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from hw.isa import ENGINES, NUM_REGS, OPCODES, WORD_BITS

from . import ops
from .scoreboard import RangeScoreboard

__all__ = ["BRANCH_PENALTY", "ENGINE_NAMES", "FAULTS", "Controller", "write_back_layout"]

#: Bubbles after a taken branch (the fetch of the target).
BRANCH_PENALTY = 1
#: Engines fed by the controller (all of `hw.isa.ENGINES` but the controller's own), in the
#: order of their uop ports.
ENGINE_NAMES = tuple(e for e in ENGINES if e != "ctrl")
#: Fault codes (the `fault` register's low byte).
FAULTS = {"none": 0, "pc": 1, "opcode": 2, "range": 3, "align": 4}
#: Register write-back ports, in the order `rtl.core.core` wires them: integer registers from
#: these engines, scalars from those. They must be the engines whose opcodes write registers.
INT_WRITERS = ("dma", "vpu", "ring")
SCALAR_WRITERS = ("scalar", "vpu", "ring")


def _writers(table: dict[str, tuple[str, ...]]) -> set[str]:
    return {ops.ENGINES[op] for op, names in table.items() if names} - {"ctrl"}


assert set(INT_WRITERS) == _writers(ops.REG_WRITES), "an engine writes registers unwired"
assert set(SCALAR_WRITERS) == _writers(ops.SREG_WRITES), "an engine writes scalars unwired"
#: Engines that release the scoreboard entry of every instruction they complete.
_RELEASERS = ("dma", "mpu", "vpu", "ring")
#: Instructions that hold an entry without vector ranges (see the module doc).
_HOLDERS = tuple(op for op, e in ops.ENGINES.items() if e in _RELEASERS and op not in ops.VRANGES)


def write_back_layout() -> data.StructLayout:
    return data.StructLayout({"valid": 1, "idx": 4, "value": 32})


def _align_checks(cfg: AccelConfig) -> dict[str, list[tuple[str, int]]]:
    """Operands the engines need on a block boundary (the compiler aligns every vector)."""
    a, p = cfg.align, cfg.hbm_ports
    out: dict[str, list[tuple[str, int]]] = {}
    for op, ranges in ops.VRANGES.items():
        if op in ("VSET", "VGET", "MM"):
            continue
        out[op] = [(rng.start, a) for _, rng in ranges]
    out["MM"] = [("src", a), ("sstride", a), ("bias", a), ("dst", p), ("dstride", p)]
    out["ALLGATHER"] = [("base", a), ("slice", a), ("stride", a)]
    return out


class Controller(wiring.Component):
    def __init__(self, cfg: AccelConfig, *, sb_entries: int = 8, max_tokens: int = 128):
        self.cfg = cfg
        self.max_tokens = max_tokens
        self.pc_bits = max(1, (cfg.imem_words - 1).bit_length())
        self.block_bits = max(1, (cfg.vbuf_words // cfg.align - 1).bit_length())
        self.sb_entries = sb_entries
        self.sb_bits = max(1, (sb_entries - 1).bit_length())
        self.uop = ops.uop_layout(self.pc_bits, self.sb_bits)
        uop_stream = stream.Signature(self.uop)
        wb = write_back_layout()
        super().__init__({
            "start": In(1),
            "program_words": In(self.pc_bits + 1),
            "devices": In(8),
            "imem_write": In(data.StructLayout({"en": 1, "addr": self.pc_bits,
                                                "data": WORD_BITS})),
            "running": Out(1),
            "done": Out(1),
            "fault": Out(8),
            "fault_pc": Out(16),
            **{f"to_{name}": Out(uop_stream) for name in ENGINE_NAMES},
            "int_wb": In(wb).array(len(INT_WRITERS)),
            "scalar_wb": In(wb).array(len(SCALAR_WRITERS)),
            "release_reads": In(sb_entries),
            "release_write": In(sb_entries),
            "hbm_writes_pending": In(1),
            "engines_idle": In(1),
            "issued": Out(1),
            "issued_pc": Out(self.pc_bits),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        a = cfg.align
        log_a = a.bit_length() - 1
        nblocks = cfg.vbuf_words // a

        imem = memory.Memory(shape=WORD_BITS, depth=cfg.imem_words, init=[])
        m.submodules.imem = imem
        wp = imem.write_port()
        m.d.comb += [wp.en.eq(self.imem_write.en), wp.addr.eq(self.imem_write.addr),
                     wp.data.eq(self.imem_write.data)]
        rp = imem.read_port(domain="sync")

        sb = RangeScoreboard(entries=self.sb_entries, block_bits=self.block_bits)
        m.submodules.scoreboard = sb
        m.d.comb += [sb.release_reads.eq(self.release_reads),
                     sb.release_write.eq(self.release_write)]

        regs = Array(Signal(32, name=f"r{k}") for k in range(NUM_REGS))
        sregs = Array(Signal(32, name=f"s{k}") for k in range(NUM_REGS))
        rpend = Signal(NUM_REGS)
        spend = Signal(NUM_REGS)

        running = Signal()
        halting = Signal()
        m.d.comb += self.running.eq(running)

        # -- fetch and decode ------------------------------------------------------------------
        f_addr = Signal(self.pc_bits)
        f_valid = Signal()
        d_valid = Signal()
        d_pc = Signal(self.pc_bits)
        d = Signal(ops.decoded_layout())
        decoded = Signal(ops.decoded_layout())
        ops.decode_fields(m, rp.data, decoded)

        fire = Signal()
        redirect = Signal()
        target = Signal(self.pc_bits)
        advance = Signal()
        m.d.comb += advance.eq(~d_valid | fire)
        next_addr = Signal(self.pc_bits)
        m.d.comb += next_addr.eq(Mux(redirect, target, f_addr + 1))
        m.d.comb += [rp.en.eq(advance | self.start), rp.addr.eq(next_addr)]
        with m.If(self.start):
            m.d.comb += rp.addr.eq(0)
            m.d.sync += [f_addr.eq(0), f_valid.eq(1), d_valid.eq(0)]
        with m.Elif(advance):
            m.d.sync += [d_valid.eq(f_valid & ~redirect & running & ~halting
                                    & ~(fire & (d.op == ops.CODES["HALT"]))),
                         d.eq(decoded), d_pc.eq(f_addr),
                         f_addr.eq(next_addr), f_valid.eq(running)]

        # -- operands --------------------------------------------------------------------------
        uop = Signal(self.uop)
        m.d.comb += [uop.op.eq(d.op), uop.pc.eq(d_pc), uop.sb.eq(sb.entry)]
        for name, (cls, _bits) in ops.FIELDS.items():
            if cls == "indexed":
                index = getattr(d, f"{name}_r")
                m.d.comb += getattr(uop, name).eq(getattr(d, name) + regs[index])
            else:
                m.d.comb += getattr(uop, name).eq(getattr(d, name))
        for name in ops.uop_layout(1, 1).members:
            if name.endswith("_v"):
                base = name[:-2]
                table = sregs if ops.FIELDS[base][0] == "sreg" else regs
                m.d.comb += getattr(uop, name).eq(table[getattr(d, base)])

        def is_op(*names):
            out = Const(0, 1)
            for n in names:
                out = out | (d.op == ops.CODES[n])
            return out

        # -- hazards ---------------------------------------------------------------------------
        waits = []
        for name in ops.INDEXED:  # absent operands decode to r0, never pending
            waits.append(rpend.bit_select(getattr(d, f"{name}_r"), 1))
        for table, pend in ((ops.REG_READS, rpend), (ops.REG_WRITES, rpend),
                            (ops.SREG_READS, spend), (ops.SREG_WRITES, spend)):
            for op, names in table.items():
                for n in names:
                    waits.append(is_op(op) & pend.bit_select(getattr(d, n), 1))
        hbm_reads = _or([is_op(op) & ops.range_enabled(op, rng, d.flags)
                         for op, ranges in ops.MATRIX_READS.items() for rng in ranges])
        waits.append(hbm_reads & self.hbm_writes_pending)

        # vector ranges
        has_ranges = Signal()
        out_of_range = Signal()
        read_slots = [sb.new_reads[i] for i in range(sb.reads)]
        for op, ranges in ops.VRANGES.items():
            with m.If(d.op == ops.CODES[op]):
                m.d.comb += has_ranges.eq(1)
                k = 0
                for role, rng in ranges:
                    start = getattr(uop, rng.start)
                    end = Signal(48, name=f"{op}_{rng.start}_{role}_end")
                    m.d.comb += end.eq(start + ops.range_length(rng, uop, a, self.devices))
                    hi = (end + (a - 1)) >> log_a
                    lo = start >> log_a
                    enabled = ops.range_enabled(op, rng, d.flags)
                    slot = sb.new_write if role == "w" else read_slots[k]
                    if role == "r":
                        k += 1
                    m.d.comb += [slot.valid.eq(enabled), slot.lo.eq(lo), slot.hi.eq(hi)]
                    with m.If(enabled & (hi > nblocks)):
                        m.d.comb += out_of_range.eq(1)
        holds = Signal()
        m.d.comb += holds.eq(is_op(*_HOLDERS))
        with m.If(holds):  # valid and empty: overlaps nothing
            m.d.comb += [sb.new_write.valid.eq(1), sb.new_write.lo.eq(0), sb.new_write.hi.eq(0)]
        misaligned = Signal()
        for op, checks in _align_checks(cfg).items():
            for name, modulus in checks:
                if modulus <= 1:
                    continue
                value = getattr(uop, name)
                bits = modulus.bit_length() - 1
                cond = is_op(op) & (value[:bits] != 0)
                if op == "MM" and name == "bias":
                    cond = cond & d.flags[ops.flag_bit("MM", "bias")]
                with m.If(cond):
                    m.d.comb += misaligned.eq(1)
        # the lanes hold partial sums for at most max_tokens tokens
        with m.If(is_op("MM") & (uop.ntok > self.max_tokens)):
            m.d.comb += out_of_range.eq(1)

        # engine readiness
        engine_ready = Signal()
        engine_valid = {}
        for name in ENGINE_NAMES:
            members = [op for op, e in ops.ENGINES.items() if e == name]
            engine_valid[name] = is_op(*members)
            port = getattr(self, f"to_{name}")
            with m.If(engine_valid[name]):
                m.d.comb += engine_ready.eq(port.ready)
        ctrl_ops = [op for op, e in ops.ENGINES.items() if e == "ctrl"]
        with m.If(is_op(*ctrl_ops)):
            m.d.comb += engine_ready.eq(1)

        known = is_op(*OPCODES)
        bad_pc = d_pc >= self.program_words
        fault_now = Signal(8)
        with m.If(d_valid & running):
            with m.If(bad_pc):
                m.d.comb += fault_now.eq(FAULTS["pc"])
            with m.Elif(~known):
                m.d.comb += fault_now.eq(FAULTS["opcode"])
            with m.Elif(out_of_range):
                m.d.comb += fault_now.eq(FAULTS["range"])
            with m.Elif(misaligned):
                m.d.comb += fault_now.eq(FAULTS["align"])

        blocked = Signal()
        m.d.comb += blocked.eq(_or(waits) | ((has_ranges | holds) & (sb.conflict | sb.full)))
        m.d.comb += fire.eq(d_valid & running & ~halting & (fault_now == 0) & ~blocked
                            & engine_ready)
        m.d.comb += [self.issued.eq(fire), self.issued_pc.eq(d_pc)]
        m.d.comb += sb.alloc.eq(fire & (has_ranges | holds))
        for name in ENGINE_NAMES:
            port = getattr(self, f"to_{name}")
            m.d.comb += [port.payload.eq(uop), port.valid.eq(fire & engine_valid[name])]

        # -- control instructions --------------------------------------------------------------
        ra = regs[d.ra].as_signed()
        rb = regs[d.rb].as_signed()
        imm = d.imm.as_signed()
        result = Signal(32)
        writes = Signal()
        with m.Switch(d.op):
            for op, expr in (("LI", imm), ("ADDI", ra + imm), ("ADD", ra + rb), ("SUB", ra - rb),
                             ("MUL", ra * rb), ("MULI", ra * imm),
                             ("MIN", Mux(ra < rb, ra, rb))):
                with m.Case(ops.CODES[op]):
                    m.d.comb += [result.eq(expr), writes.eq(1)]
        taken = Signal()
        with m.Switch(d.op):
            for op, cond in (("BLT", ra < rb), ("BGE", ra >= rb), ("BEQ", ra == rb),
                             ("BNE", ra != rb), ("JMP", Const(1, 1))):
                with m.Case(ops.CODES[op]):
                    m.d.comb += taken.eq(cond)
        m.d.comb += [redirect.eq(fire & taken), target.eq(d.target)]

        # register writes: control at issue, engines on write-back; pending bits
        set_r = Signal(NUM_REGS)
        set_s = Signal(NUM_REGS)
        for op, names in ops.REG_WRITES.items():
            if ops.ENGINES[op] != "ctrl":
                for n in names:
                    with m.If(fire & is_op(op)):
                        m.d.comb += set_r.eq(1 << getattr(d, n))
        for op, names in ops.SREG_WRITES.items():
            for n in names:
                with m.If(fire & is_op(op)):
                    m.d.comb += set_s.eq(1 << getattr(d, n))
        clr_r = Signal(NUM_REGS)
        clr_s = Signal(NUM_REGS)
        m.d.comb += [clr_r.eq(_or([Mux(wb.valid, 1 << wb.idx, 0) for wb in self.int_wb])),
                     clr_s.eq(_or([Mux(wb.valid, 1 << wb.idx, 0) for wb in self.scalar_wb]))]
        for wb in self.int_wb:
            with m.If(wb.valid & (wb.idx != 0)):
                m.d.sync += regs[wb.idx].eq(wb.value)
        for wb in self.scalar_wb:
            with m.If(wb.valid):
                m.d.sync += sregs[wb.idx].eq(wb.value)
        with m.If(fire & writes & (d.rd != 0)):
            m.d.sync += regs[d.rd].eq(result)
        m.d.sync += [rpend.eq((rpend | set_r) & ~clr_r & ~1),
                     spend.eq((spend | set_s) & ~clr_s)]

        # -- run state -------------------------------------------------------------------------
        finished = Signal()
        m.d.comb += finished.eq(halting & self.engines_idle & sb.empty & (rpend == 0)
                                & (spend == 0) & ~self.hbm_writes_pending)
        with m.If(self.start):
            m.d.sync += [running.eq(1), halting.eq(0), self.fault.eq(0), self.fault_pc.eq(0),
                         rpend.eq(0), spend.eq(0)]
            m.d.sync += [r.eq(0) for r in regs] + [s.eq(0) for s in sregs]
        with m.Elif(running):
            with m.If(fire & is_op("HALT")):
                m.d.sync += halting.eq(1)
            with m.If(fault_now != 0):
                m.d.sync += [self.fault.eq(fault_now), self.fault_pc.eq(d_pc),
                             halting.eq(1), d_valid.eq(0)]
            with m.If(finished):
                m.d.sync += running.eq(0)
                m.d.comb += self.done.eq(1)
        return m


def _or(values):
    out = Const(0, 1)
    for v in values:
        out = out | v
    return out

