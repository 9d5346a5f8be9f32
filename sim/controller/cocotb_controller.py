"""cocotb tests of the controller alone (`sim.controller.top`): programs assembled with
`hw.isa.assemble` (loops on BLT/BNE counters, forward branches, register-indexed addresses,
LI/ADDI/ADD/SUB/MUL/MULI/MIN, LDR-driven loop bounds and pointers) run on the controller while
cocotb models play the engines, checked against the `isa` backend (`IsaDevice`) instruction by
instruction.

The case comes in TANDEM_CTRL_CASE (JSON): program (a name in `PROGRAMS`, or "random" for one
drawn by `random_program`), seed, pause (the probability that an engine refuses a micro-op in
a cycle), max_delay (an engine takes 1..max_delay cycles per instruction) and optional
corrupt, a micro-op sampled with one flipped bit in its pc field (the negative test).

The engine models take micro-ops whenever they are ready (a ready that never depends on valid),
complete them in order after a random delay, and then do what the engines do: write back
registers (LDR from the HBM image, ARGMAX, SLI, ARGMAXALL), release the instruction's
scoreboard entry, and hold `hbm_writes_pending` while a store is in flight. Checked:
- the issue stream (`issued_pc`) is the pc sequence `IsaDevice` executes, HALT included;
- every micro-op goes to its engine with the operands `IsaDevice` resolves (indexed operands
  as immediate plus register, immediates, register numbers, the values of the registers it
  names), so register values are checked wherever they are used (the programs end by sending
  every register out with TOKOUT);
- hazards: no micro-op issues while an earlier instruction that writes a vector range it reads
  or writes, or reads a range it writes, is still in flight (`hw.perf.footprint`, not the
  controller's own tables), and no HBM read of LOADR or a direct MM while a store is in flight;
- the run ends with `done`, no fault, and nothing in flight.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly

from hw.hbm import HbmImage
from hw.intmath import ceil_div
from hw.isa import KINDS, OPCODES, assemble, encode
from hw.isasim.device import RING_OPS, IsaDevice
from hw.perf import footprint
from rtl.core import ops
from rtl.core.controller import ENGINE_NAMES, INT_WRITERS, SCALAR_WRITERS
from sim.controller.top import CONFIG, make_controller
from sim.tb import TB

A = CONFIG.align
_CTRL = make_controller()
UOP = _CTRL.uop
PC_BITS = _CTRL.pc_bits
STORES = {"TOKOUT", "STOREV", "STORER", "STOREC"}
TABLE_BYTES = 1024  # LDR's table at the bottom of the scalar area; TOKOUT writes above it
HBM = 0x10000  # vectors load from and store to HBM here: zeros, away from the table

PROGRAMS = {
    # nested loops (BLT up, BNE down), products and minima, vector addresses off registers
    "loops": """
        LI rd=r1 imm=0
        LI rd=r2 imm=4
        LI rd=r3 imm=-7
    outer:
        LI rd=r4 imm=0
        MULI rd=r5 ra=r1 imm=64
    inner:
        MUL rd=r6 ra=r4 rb=r1
        SUB rd=r3 ra=r3 rb=r6
        MULI rd=r7 ra=r4 imm=8
        ADD rd=r7 ra=r7 rb=r5
        LOADV dst=0x1000+r7 src=0x10000+r7 len=8
        VADD dst=0x2000+r7 a=0x1000+r7 b=0x3000 len=8
        ADDI rd=r4 ra=r4 imm=1
        BLT ra=r4 rb=r1 target=inner
        LI rd=r8 imm=3
    down:
        ADDI rd=r8 ra=r8 imm=-1
        MIN rd=r9 ra=r3 rb=r8
        STOREV dst=0x10000+r5 src=0x2000+r5 len=16
        BNE ra=r8 rb=r0 target=down
        ADDI rd=r1 ra=r1 imm=1
        BLT ra=r1 rb=r2 target=outer
        BEQ ra=r1 rb=r2 target=done
        LI rd=r10 imm=99
    done:
        MUL rd=r11 ra=r3 rb=r3
        MIN rd=r12 ra=r11 rb=r3
    """,
    # loop bound and addresses loaded from memory (LDR), pointer chasing, engine write-backs
    # feeding later addresses, a store before an HBM read, the ring's register write-backs
    "dynamic": """
        LDR rd=r1 addr=0
        LI rd=r2 imm=0
    loop:
        MULI rd=r3 ra=r2 imm=4
        LDR rd=r4 addr=16+r3
        LDR rd=r5 addr=r4
        LOADV dst=r4 src=0x2000 len=16
        VADD dst=0x4000+r4 a=r4 b=r4 len=16
        ARGMAX rd=r6 sd=s1 a=0x4000+r4 len=16 base=r5
        TOKOUT ra=r6 addr=0x700+r3
        LOADR dst=0x7000 mat=0x20000 ldb=2 row=r2 len=16
        MM dst=0x6000+r4 src=0x4000+r4 w=0x10000 ldb=2 rows=8 cols=16 ntok=2 dstride=8 \
            sstride=16 bias=0x200 flags=bias
        SLI sd=s2 imm=1.5
        ARGMAXALL rd=r6 sd=s2
        SYNC
        ADD rd=r7 ra=r7 rb=r6
        ADD rd=r8 ra=r6 rb=r4
        VADD dst=0x100+r8 a=0x100+r8 b=0x8000 len=8
        ADDI rd=r2 ra=r2 imm=1
        BLT ra=r2 rb=r1 target=loop
    """,
}


def _epilogue() -> str:
    """Every register out, so each final value is checked through TOKOUT's `ra_v`."""
    lines = [f"TOKOUT ra=r{r} addr={TABLE_BYTES + 4 * r}" for r in range(1, 16)]
    return "\n".join([*lines, "HALT"])


def random_program(rng: random.Random) -> str:
    """Blocks of random instructions, some inside counted loops (BLT up or BNE down, nested up
    to two deep), some behind forward branches. r1..r7 hold arbitrary values, r8..r10 vector
    offsets (multiples of `align`, bounded), r12..r15 loop counters and limits."""
    lines = ["LI rd=r8 imm=0", "LI rd=r9 imm=64", "LI rd=r10 imm=128"]
    labels = iter(range(10_000))

    def data_reg():
        return f"r{rng.randrange(1, 8)}"

    def vreg():
        return f"r{rng.choice([8, 9, 10])}"

    def vaddr(region: int) -> str:
        return f"{region + A * rng.randrange(64)}+{vreg()}"

    def op() -> list[str]:
        kind = rng.choice(["LI", "ADDI", "ADD", "SUB", "MUL", "MULI", "MIN", "IDX", "IDX",
                           "LDR", "LDRI", "LOADV", "VADD", "STOREV", "ARGMAX", "SLI",
                           "TOKOUT", "SYNC", "ARGMAXALL", "LOADR", "MM", "NOP"])
        n = A * rng.randrange(1, 5)
        if kind == "LI":
            return [f"LI rd={data_reg()} imm={rng.randrange(-2**31, 2**31)}"]
        if kind in ("ADDI", "MULI"):
            return [f"{kind} rd={data_reg()} ra={data_reg()} imm={rng.randrange(-999, 999)}"]
        if kind in ("ADD", "SUB", "MUL", "MIN"):
            return [f"{kind} rd={data_reg()} ra={data_reg()} rb={data_reg()}"]
        if kind == "IDX":  # a new vector offset: a bounded multiple of align
            return [f"LI rd={vreg()} imm={A * rng.randrange(256)}"]
        if kind == "LDR":
            return [f"LDR rd={data_reg()} addr={4 * rng.randrange(TABLE_BYTES // 4)}"]
        if kind == "LDRI":  # an offset from memory, indexed by a loop counter
            return ["MULI rd=r11 ra=r12 imm=4", f"LDR rd={vreg()} addr={4 * rng.randrange(8)}+r11"]
        if kind == "LOADV":
            return [f"LOADV dst={vaddr(0x1000)} src={HBM + rng.randrange(64) * 64} len={n}"]
        if kind == "VADD":
            return [f"VADD dst={vaddr(0x1000)} a={vaddr(0x1000)} b={vaddr(0x4000)} len={n}"]
        if kind == "STOREV":
            return [f"STOREV dst={HBM + rng.randrange(64) * 64} src={vaddr(0x1000)} len={n}"]
        if kind == "ARGMAX":
            return [f"ARGMAX rd={data_reg()} sd=s{rng.randrange(16)} a={vaddr(0x1000)} len={n} "
                    f"base={rng.randrange(100)}+{data_reg()}"]
        if kind == "SLI":
            return [f"SLI sd=s{rng.randrange(16)} imm={rng.uniform(-4, 4)}"]
        if kind == "TOKOUT":
            return [f"TOKOUT ra={data_reg()} addr={TABLE_BYTES + 4 * rng.randrange(64)}"]
        if kind == "ARGMAXALL":
            return [f"ARGMAXALL rd={data_reg()} sd=s{rng.randrange(16)}"]
        if kind == "LOADR":
            return [f"LOADR dst={vaddr(0x1000)} mat=0x20000 ldb=2 row={rng.randrange(8)} "
                    f"len={n}"]
        if kind == "MM":
            flags = rng.choice(["", " flags=bias bias=0x200"])
            return [f"MM dst={vaddr(0x1000)} src={vaddr(0x4000)} w=0x10000 ldb=2 rows={n} "
                    f"cols=16 ntok={rng.randrange(1, 3)} dstride={n} sstride=16{flags}"]
        return [kind]

    def block(depth: int, size: int) -> list[str]:
        out = []
        for _ in range(size):
            roll = rng.random()
            if roll < 0.15 and depth < 2:
                counter, limit = f"r{12 + depth}", f"r{14 + depth}"
                head = f"L{next(labels)}"
                trips = rng.randrange(1, 4)
                if rng.random() < 0.5:
                    out += [f"LI rd={counter} imm=0", f"LI rd={limit} imm={trips}", f"{head}:"]
                    out += block(depth + 1, rng.randrange(2, 6))
                    out += [f"ADDI rd={counter} ra={counter} imm=1",
                            f"BLT ra={counter} rb={limit} target={head}"]
                else:
                    out += [f"LI rd={counter} imm={trips}", f"{head}:"]
                    out += block(depth + 1, rng.randrange(2, 6))
                    out += [f"ADDI rd={counter} ra={counter} imm=-1",
                            f"BNE ra={counter} rb=r0 target={head}"]
            elif roll < 0.25:
                skip = f"L{next(labels)}"
                cond = rng.choice(["BLT", "BGE", "BEQ", "BNE"])
                out.append(f"{cond} ra={data_reg()} rb={data_reg()} target={skip}")
                out += block(depth, rng.randrange(1, 3))
                out.append(f"{skip}:")
            else:
                out += op()
        return out

    lines += block(0, 40)
    return "\n".join(lines)


def high(signal) -> bool:
    return str(signal.value) == "1"


def _field(word: int, name: str) -> int:
    f = UOP[name]
    return (word >> f.offset) & ((1 << f.width) - 1)


def _raw(value, kind_name: str, op: str) -> int:
    """An operand's bits as the instruction word holds them."""
    kind = KINDS[kind_name]
    if kind.fmt == "f32":
        return int(np.asarray(value, np.float32).view(np.uint32))
    if kind.fmt == "f16":
        return int(np.asarray(value, np.float16).view(np.uint16))
    if kind.fmt == "flags":
        return sum(1 << OPCODES[op].flags.index(f) for f in value)
    return int(value)


def expected_uop(instr, v: dict, regs: list[int], sregs: np.ndarray) -> dict[str, int]:
    """The micro-op members an instruction must carry, from the isa model's state at issue."""
    out = {"op": OPCODES[instr.op].code}
    for name, kind_name in OPCODES[instr.op].fields:
        kind = KINDS[kind_name]
        width = UOP[name].width
        if kind.has_reg:
            out[name] = int(v[name]) & ((1 << width) - 1)
        else:
            out[name] = _raw(instr.args[name], kind_name, instr.op) & ((1 << width) - 1)
        if kind.fmt == "reg" and f"{name}_v" in UOP.members:
            out[f"{name}_v"] = regs[v[name]] & 0xFFFFFFFF
        if kind.fmt == "sreg" and f"{name}_v" in UOP.members:
            out[f"{name}_v"] = int(np.asarray(sregs[v[name]], np.float32).view(np.uint32))
    return out


def isa_run(program, image: HbmImage):
    """(pcs executed, [(pc, engine, instr, expected uop, footprint)]) of `IsaDevice`."""
    dev = IsaDevice(0, CONFIG, program, image)
    dev.reset()
    pcs, issues = [], []
    while not dev.halted:
        instr, v = dev.peek()
        pcs.append(dev.pc)
        engine = ops.ENGINES[instr.op]
        if engine != "ctrl":
            issues.append((dev.pc, engine, instr, expected_uop(instr, v, dev.regs, dev.sregs),
                           footprint(instr.op, v, CONFIG)))
        if instr.op in RING_OPS:  # one device: ARGMAXALL keeps its registers, SYNC waits
            dev.commit_ring(instr, v, dev.ring_ready(instr, v))
        else:
            dev.execute(instr, v)
        if len(pcs) > 20_000:
            raise AssertionError("the program does not halt in the isa model")
    return pcs, issues


def _blocks(ranges) -> list[tuple[int, int]]:
    return [(start // A, ceil_div(start + count, A)) for start, count in ranges if count > 0]


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> bool:
    return any(lo < hi2 and lo2 < hi for lo, hi in a for lo2, hi2 in b)


class Engines:
    """The six engines: take micro-ops, complete them in order after a delay, write back."""

    def __init__(self, dut, rng: random.Random, pause: float, max_delay: int,
                 image: HbmImage):
        self.dut, self.rng, self.pause, self.max_delay = dut, rng, pause, max_delay
        self.image = image
        self.queues: dict[str, list[dict]] = {name: [] for name in ENGINE_NAMES}
        self.ready = dict.fromkeys(ENGINE_NAMES, False)
        self.tokens: list[tuple[int, int]] = []  # TOKOUT (addr, value)
        self.errors: list[str] = []

    def in_flight(self) -> list[dict]:
        return [job for q in self.queues.values() for job in q]

    def drive(self, cycle: int) -> None:
        """This cycle's inputs: completions of jobs due, readiness, run-state signals."""
        dut = self.dut
        int_wb = [0] * len(INT_WRITERS)
        scalar_wb = [0] * len(SCALAR_WRITERS)
        release = 0
        for name, queue in self.queues.items():
            if queue and queue[0]["due"] <= cycle:
                job = queue.pop(0)
                word, op = job["word"], job["op"]
                if name in ("dma", "ring", "vpu", "mpu"):  # as the RTL engines do
                    release |= 1 << _field(word, "sb")
                wb_int = wb_scalar = None
                if op == "LDR":
                    addr = _field(word, "addr")
                    wb_int = (_field(word, "rd"), int(self.image.read_i32(addr)[0]))
                elif op == "TOKOUT":
                    self.tokens.append((_field(word, "addr"), _field(word, "ra_v")))
                elif op == "ARGMAX":  # the vector buffer holds zeros: index 0, value +0
                    wb_int = (_field(word, "rd"), _field(word, "base"))
                    wb_scalar = (_field(word, "sd"), 0)
                elif op == "SLI":
                    wb_scalar = (_field(word, "sd"), _field(word, "imm"))
                elif op == "ARGMAXALL":  # alone on the ring: its own candidate
                    wb_int = (_field(word, "rd"), _field(word, "rd_v"))
                    wb_scalar = (_field(word, "sd"), _field(word, "sd_v"))
                if wb_int is not None:
                    idx, value = wb_int
                    int_wb[INT_WRITERS.index(name)] = 1 | idx << 1 | (value & 0xFFFFFFFF) << 5
                if wb_scalar is not None:
                    idx, value = wb_scalar
                    scalar_wb[SCALAR_WRITERS.index(name)] = 1 | idx << 1 | value << 5
        for k in range(len(INT_WRITERS)):
            getattr(dut, f"int_wb__{k}").value = int_wb[k]
        for k in range(len(SCALAR_WRITERS)):
            getattr(dut, f"scalar_wb__{k}").value = scalar_wb[k]
        dut.release_reads.value = release
        dut.release_write.value = release
        dut.hbm_writes_pending.value = int(any(j["op"] in STORES for j in self.queues["dma"]))
        dut.engines_idle.value = int(not self.in_flight())
        for name in ENGINE_NAMES:
            busy = name == "ring" and bool(self.queues["ring"])  # the ring: one at a time
            self.ready[name] = not busy and self.rng.random() >= self.pause
            getattr(dut, f"to_{name}__ready").value = int(self.ready[name])

    def sample(self, cycle: int) -> list[tuple[str, int]]:
        """Micro-ops taken at this cycle's edge."""
        taken = []
        for name in ENGINE_NAMES:
            if self.ready[name] and high(getattr(self.dut, f"to_{name}__valid")):
                word = int(getattr(self.dut, f"to_{name}__payload").value)
                code = _field(word, "op")
                op = next(o for o, s in OPCODES.items() if s.code == code)
                queue = self.queues[name]
                due = max([cycle + self.rng.randrange(1, self.max_delay + 1)]
                          + [j["due"] + 1 for j in queue])
                queue.append({"word": word, "op": op, "due": due})
                taken.append((name, word))
        return taken


@cocotb.test()
async def program_matches_the_isa_device(dut):
    case = json.loads(os.environ["TANDEM_CTRL_CASE"])
    rng = random.Random(case["seed"])
    text = (random_program(rng) if case["program"] == "random"
            else PROGRAMS[case["program"]]) + "\n" + _epilogue()
    program = assemble(text)
    image = HbmImage(CONFIG)
    table = [A * rng.randrange(TABLE_BYTES // A) for _ in range(TABLE_BYTES // 4)]
    table[0] = 3  # "dynamic": the loop bound
    image.write_i32(0, table)
    pcs, issues = isa_run(program, image.copy())
    dut._log.info("%d instructions, %d executed, %d micro-ops", len(program), len(pcs),
                  len(issues))

    tb = TB(dut)
    engines = tb.add(Engines(dut, rng, case["pause"], case["max_delay"], image))
    dut.start.value = 0
    dut.devices.value = 1
    dut.program_words.value = len(program)
    dut.imem_write.value = 0
    engines.drive(0)
    await tb.reset(cycles=3)
    for addr, instr in enumerate(program):
        await FallingEdge(dut.clk)
        dut.imem_write.value = 1 | addr << 1 | encode(instr) << (1 + PC_BITS)
    await FallingEdge(dut.clk)
    dut.imem_write.value = 0
    dut.start.value = 1
    await FallingEdge(dut.clk)
    dut.start.value = 0

    issued_pcs: list[int] = []
    k = 0  # next expected micro-op
    inflight: list[tuple[dict, object]] = []  # (job, footprint) not yet complete
    limit = 2000 + len(pcs) * (4 + 2 * case["max_delay"])
    done = False
    for cycle in range(limit):
        await FallingEdge(dut.clk)
        engines.drive(cycle)
        inflight = [(job, fp) for job, fp in inflight
                    if any(job is j for j in engines.in_flight())]
        await ReadOnly()
        if high(dut.issued):
            issued_pcs.append(int(dut.issued_pc.value))
        for name, word in engines.sample(cycle):
            if case.get("corrupt") == k:  # negative test: the checker must see one bad bit
                word ^= 1 << UOP["pc"].offset
            assert k < len(issues), f"cycle {cycle}: a micro-op beyond the isa stream ({name})"
            pc, engine, instr, want, fp = issues[k]
            where = f"micro-op {k} (pc {pc}: {instr})"
            assert name == engine, f"{where} went to {name}, not {engine}"
            got = {n: _field(word, n) for n in want}
            diff = {n: (got[n], want[n]) for n in want if got[n] != want[n]}
            assert not diff, f"{where}: (got, expected) {diff}"
            assert _field(word, "pc") == pc, f"{where}: pc {_field(word, 'pc')}"
            reads, writes = _blocks(fp.vreads), _blocks(fp.vwrites)
            for job, other in inflight:
                r2, w2 = _blocks(other.vreads), _blocks(other.vwrites)
                clash = _overlap(reads, w2) or _overlap(writes, w2) or _overlap(writes, r2)
                assert not clash, (f"{where} issued while {job['op']} (pc "
                                   f"{_field(job['word'], 'pc')}) on overlapping vector ranges "
                                   "is in flight")
            hbm_read = instr.op == "LOADR" or (instr.op == "MM"
                                               and "prefetched" not in instr["flags"])
            if hbm_read:
                assert not any(job["op"] in STORES for job, _ in inflight), \
                    f"{where} reads HBM while a store is in flight"
            inflight.append((engines.queues[name][-1], fp))
            k += 1
        assert int(dut.fault.value) == 0, \
            f"fault {int(dut.fault.value)} at pc {int(dut.fault_pc.value)}"
        if high(dut.done):
            done = True
            assert not engines.in_flight(), "done with instructions in flight"
            break
    assert done, f"no done within {limit} cycles ({k} of {len(issues)} micro-ops issued)"
    assert k == len(issues), f"{k} micro-ops issued, the isa model issues {len(issues)}"
    first = next((i for i, (a, b) in enumerate(zip(issued_pcs, pcs, strict=False)) if a != b),
                 min(len(pcs), len(issued_pcs)))
    assert issued_pcs == pcs, (f"the issue stream differs from the isa model's at position "
                               f"{first}: {issued_pcs[first:first + 5]} != {pcs[first:first + 5]}")
    dut._log.info("%d instructions issued in %d cycles, %d tokens out", len(issued_pcs),
                  cycle, len(engines.tokens))
