"""`IsaDevice`: one accelerator executing its program instruction by instruction.

Functionally exact: every arithmetic instruction calls the `hw.numerics` function of its unit,
so results are the RTL's results bit for bit. Timing comes from `hw.perf`: each instruction is
placed on the device's `Timeline`. A device stops at ring instructions; `IsaCluster` resolves
them across all devices.

In timing-only mode (`functional=False`) no arithmetic runs and no vector buffer exists; control
flow and addresses still execute, so the instruction stream, and so the timing, is the same.

Dispatch is a table keyed by opcode (`_EXECUTE`): one execution function per opcode, registered
with `@_executes`, and checked at import to cover every opcode of `hw.isa` that is not the
ring's (those are `IsaCluster`'s collectives). Costs and scoreboard footprints are `hw.perf`'s,
derived from the same table.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hw import numerics as nx
from hw.config import AccelConfig
from hw.hbm import HbmImage
from hw.intmath import round_up
from hw.isa import KINDS, OPCODES, Instr, resolve
from hw.perf import Cost, Footprint, Timeline, footprint, op_cost

__all__ = ["RING_OPS", "DeviceError", "IsaDevice"]

#: Opcodes the ring engine executes: a device stops at them and `IsaCluster` carries them out.
RING_OPS = frozenset(op for op, spec in OPCODES.items() if spec.engine == "ring")

#: What each opcode the device runs itself does: opcode -> (function(device, v) returning the
#: next pc or None to fall through, data-only). Data-only functions move or compute values and
#: never steer control flow, so a timing-only run skips them. Filled by `_executes` below and
#: checked at import to cover every opcode of `hw.isa` but the ring's.
_EXECUTE: dict[str, tuple[Callable[[IsaDevice, dict], int | None], bool]] = {}


def _executes(*ops: str, data: bool = True):
    """Register the decorated function as the execution of `ops`."""

    def register(fn):
        for op in ops:
            assert op in OPCODES, op
            assert op not in _EXECUTE, op
            _EXECUTE[op] = (fn, data)
        return fn

    return register


class _Decoded:
    """An instruction split once into its fixed operands and its indexed ones."""

    __slots__ = ("index_regs", "indexed", "instr", "op", "static")

    def __init__(self, instr: Instr) -> None:
        self.instr = instr
        self.op = instr.op
        self.static: dict = {}
        self.indexed: list[tuple[str, int, int]] = []
        for name, kind in OPCODES[instr.op].fields:
            value = instr.args[name]
            if KINDS[kind].has_reg:
                if value.reg:
                    self.indexed.append((name, value.imm, value.reg))
                else:
                    self.static[name] = value.imm
            else:
                self.static[name] = value
        self.index_regs = [reg for _, _, reg in self.indexed]


class DeviceError(RuntimeError):
    """A program fault: a bad address, an unmatched PREFETCH, a runaway loop."""


def _wrap32(x: int) -> int:
    return ((int(x) + 2**31) % 2**32) - 2**31


class IsaDevice:
    def __init__(self, index: int, config: AccelConfig, program: list[Instr],
                 image: HbmImage | None, functional: bool = True) -> None:
        self.index = index
        self.config = config
        self.program = program
        self.image = image if image is not None else HbmImage(config)
        self.functional = functional
        #: the vector buffer; a timing-only device has none (see `buffer`)
        self.vbuf = np.zeros(config.vbuf_words, np.float16) if functional else None
        self.regs = [0] * 16
        self.sregs = np.zeros(16, np.float32)
        self.pc = 0
        self.halted = False
        self.timeline = Timeline(config)
        self.executed = 0
        self.events: list[tuple[int, int, dict]] = []  # TOKOUT (addr, value, timeline snapshot)
        self._pending_prefetch: list[tuple] = []  # PREFETCHed matrices not yet consumed
        self._weights: dict[tuple, np.ndarray] = {}
        self._decoded: dict[int, _Decoded] = {}
        self._timings: dict[tuple, tuple[Cost, Footprint]] = {}
        self.trace: list[dict] | None = None
        self.argmax_inputs: list[np.ndarray] | None = None  # filled when logits are wanted
        #: the ARGMAX whose inputs are the logits (an MoE program has router ARGMAXes too);
        #: None records every ARGMAX
        self.argmax_pc: int | None = None
        #: when a list: the HBM address of every matrix an MM reads, in execution order (shows
        #: which MoE experts a run selected)
        self.mm_reads: list[int] | None = None
        #: timing-only runs: loops that may be fast-forwarded, head pc -> (counter reg, limit)
        self.loop_hints: dict[int, tuple[int, int]] = {}
        self._visits: dict[int, list[tuple]] = {}
        self.fast_forwarded = 0  # loop iterations skipped

    def reset(self) -> None:
        """Ready to start again; HBM contents stay (weights, KV cache)."""
        self.regs = [0] * 16
        self.sregs[:] = 0
        self.pc = 0
        self.halted = False
        self.timeline = Timeline(self.config)
        self.executed = 0
        self.events = []
        self._pending_prefetch = []

    # -- helpers ---------------------------------------------------------------------------

    def _decode(self, pc: int) -> _Decoded:
        d = self._decoded.get(pc)
        if d is None:
            d = self._decoded[pc] = _Decoded(self.program[pc])
        return d

    def _timing(self, pc: int, d: _Decoded, v: dict) -> tuple[Cost, Footprint]:
        """Cost and scoreboard footprint, cached on the values of the index registers."""
        key = (pc, *(self.regs[r] for r in d.index_regs))
        hit = self._timings.get(key)
        if hit is None:
            cost = op_cost(d.op, v, self.config)
            fp = self.timeline.prepare(footprint(d.op, v, self.config))
            hit = self._timings[key] = (cost, fp)
        return hit

    def _vrange(self, start: int, count: int, what: str) -> slice:
        if start < 0 or start + count > self.config.vbuf_words:
            raise DeviceError(f"device {self.index} pc {self.pc}: {what} touches vector-buffer "
                              f"words {start}..{start + count - 1}, outside 0.."
                              f"{self.config.vbuf_words - 1}")
        return slice(start, start + count)

    @property
    def buffer(self) -> np.ndarray:
        """The vector buffer, for what only a functional device runs (data-only
        instructions, collectives); a timing-only device has none to give."""
        if self.vbuf is None:
            raise DeviceError(f"device {self.index} is timing-only: it has no vector buffer")
        return self.vbuf

    def _vec(self, v: dict, name: str, length: int) -> np.ndarray:
        n = round_up(int(length), self.config.align)
        return self.buffer[self._vrange(int(v[name]), n, name)]

    def _set_vec(self, v: dict, name: str, values: np.ndarray) -> None:
        self.buffer[self._vrange(int(v[name]), len(values), name)] = values

    # -- execution -------------------------------------------------------------------------

    def peek(self) -> tuple[Instr, dict]:
        if not 0 <= self.pc < len(self.program):
            raise DeviceError(f"device {self.index}: pc {self.pc} is outside the program "
                              f"(0..{len(self.program) - 1}); a HALT is missing")
        d = self._decode(self.pc)
        v = dict(d.static)
        regs = self.regs
        for name, imm, reg in d.indexed:
            v[name] = imm + regs[reg]
        return d.instr, v

    def run_to_collective(self, limit: int) -> tuple[Instr, dict] | None:
        """Execute until a ring instruction (returned, not executed) or HALT (None)."""
        while not self.halted:
            instr, v = self.peek()
            if instr.op in RING_OPS:
                return instr, v
            self.execute(instr, v)
            if self.executed > limit:
                raise DeviceError(f"device {self.index} executed more than {limit} "
                                  "instructions; the program does not halt")
        return None

    def ring_ready(self, instr: Instr, v: dict) -> float:
        d = self._decode(self.pc)
        cost, fp = self._timing(self.pc, d, v)
        return self.timeline.ready(cost, fp, d.index_regs)

    def commit_ring(self, instr: Instr, v: dict, start: float) -> None:
        cost, fp = self._timing(self.pc, self._decode(self.pc), v)
        done = self.timeline.commit(instr.op, v, cost, fp, start)
        self._record(instr, cost, start, done)
        self.executed += 1
        self.pc += 1

    def execute(self, instr: Instr, v: dict) -> None:
        op = instr.op
        d = self._decode(self.pc)
        cost, fp = self._timing(self.pc, d, v)
        start = self.timeline.ready(cost, fp, d.index_regs)
        entry = _EXECUTE.get(op)
        if entry is None:
            raise DeviceError(f"device {self.index} pc {self.pc}: {op} is a ring instruction; "
                              "IsaCluster carries it out")
        run, data_only = entry
        next_pc = None if data_only and not self.functional else run(self, v)
        if next_pc is None:
            next_pc = self.pc + 1
        taken = next_pc != self.pc + 1
        done = self.timeline.commit(op, v, cost, fp, start, taken_branch=taken)
        self._record(instr, cost, start, done)
        self.executed += 1
        self.pc = next_pc
        if taken and next_pc in self.loop_hints and not self.functional:
            self._loop_head(next_pc)

    def _loop_head(self, head: int) -> None:
        """At a loop's back-edge: if the last two iterations left the timeline in the same
        relative state and moved the registers by the same amounts, every further iteration
        but the last is identical; account for them at once (exact, timing-only)."""
        counter, limit = self.loop_hints[head]
        tl = self.timeline
        t = tl.next_issue
        visit = (t, list(self.regs), tl.relative_state(t), tl.counters(), self.executed,
                 list(self._pending_prefetch))
        history = self._visits.setdefault(head, [])
        if history and self.regs[counter] != history[-1][1][counter] + 1:
            history.clear()  # a new run of the loop
        history.append(visit)
        del history[:-3]
        if len(history) < 3:
            return
        (t0, r0, _, _, _, _), (t1, r1, s1, c1, e1, p1), (t2, r2, s2, c2, e2, p2) = history
        step = [b - a for a, b in zip(r1, r2, strict=True)]
        if s1 != s2 or step != [b - a for a, b in zip(r0, r1, strict=True)] or \
                step[counter] != 1 or t2 - t1 != t1 - t0:
            return
        times = limit - r2[counter] - 1  # the last iteration leaves the loop: run it
        if times <= 0:
            return
        delta = {
            "breakdown": {k: c2["breakdown"][k] - c1["breakdown"][k] for k in c2["breakdown"]},
            "busy": {k: c2["busy"][k] - c1["busy"][k] for k in c2["busy"]},
            **{k: c2[k] - c1[k] for k in ("hbm_read_bytes", "hbm_write_bytes", "weight_bytes",
                                          "kv_bytes")},
        }
        w_step = p2[0][0] - p1[0][0] if p1 and p2 and len(p1) == len(p2) else 0
        tl.fast_forward(t, t2 - t1, delta, times, w_step)
        self.regs = [_wrap32(r + times * d) for r, d in zip(self.regs, step, strict=True)]
        self.regs[0] = 0
        self._pending_prefetch = [(w + times * w_step, *rest)
                                  for w, *rest in self._pending_prefetch]
        self.executed += times * (e2 - e1)
        self.fast_forwarded += times
        history.clear()

    def _record(self, instr: Instr, cost: Cost, start: float, done: float) -> None:
        if instr.op == "TOKOUT":
            self.events.append((int(resolve(instr, self.regs)["addr"]),
                                self.regs[instr.args["ra"]], self.timeline.snapshot()))
        if self.trace is not None:
            self.trace.append({"pc": self.pc, "op": instr.op, "engine": cost.engine,
                               "category": cost.category, "start": start, "done": done})

    def _setr(self, rd: int, value: int) -> None:
        if rd:
            self.regs[rd] = _wrap32(value)

    def _vlen(self, n: int) -> int:
        return round_up(n, self.config.align)

    # -- execution functions, one per opcode (see `_EXECUTE`) -------------------------------
    # Each takes the resolved operands `v`; the vector-buffer ranges and registers it touches
    # are the ones its `hw.isa` entry declares (tests/hw/test_isa_meaning.py checks this).

    @_executes("NOP", data=False)
    def _nop(self, v: dict) -> None:
        pass

    @_executes("HALT", data=False)
    def _halt(self, v: dict) -> None:
        self.halted = True

    @_executes("LI", data=False)
    def _li(self, v: dict) -> None:
        self._setr(v["rd"], v["imm"])

    @_executes("ADDI", data=False)
    def _addi(self, v: dict) -> None:
        self._setr(v["rd"], self.regs[v["ra"]] + v["imm"])

    @_executes("ADD", data=False)
    def _add(self, v: dict) -> None:
        self._setr(v["rd"], self.regs[v["ra"]] + self.regs[v["rb"]])

    @_executes("SUB", data=False)
    def _sub(self, v: dict) -> None:
        self._setr(v["rd"], self.regs[v["ra"]] - self.regs[v["rb"]])

    @_executes("MUL", data=False)
    def _mul(self, v: dict) -> None:
        self._setr(v["rd"], self.regs[v["ra"]] * self.regs[v["rb"]])

    @_executes("MULI", data=False)
    def _muli(self, v: dict) -> None:
        self._setr(v["rd"], self.regs[v["ra"]] * v["imm"])

    @_executes("MIN", data=False)
    def _min(self, v: dict) -> None:
        self._setr(v["rd"], min(self.regs[v["ra"]], self.regs[v["rb"]]))

    @_executes("BLT", data=False)
    def _blt(self, v: dict) -> int | None:
        return v["target"] if self.regs[v["ra"]] < self.regs[v["rb"]] else None

    @_executes("BGE", data=False)
    def _bge(self, v: dict) -> int | None:
        return v["target"] if self.regs[v["ra"]] >= self.regs[v["rb"]] else None

    @_executes("BEQ", data=False)
    def _beq(self, v: dict) -> int | None:
        return v["target"] if self.regs[v["ra"]] == self.regs[v["rb"]] else None

    @_executes("BNE", data=False)
    def _bne(self, v: dict) -> int | None:
        return v["target"] if self.regs[v["ra"]] != self.regs[v["rb"]] else None

    @_executes("JMP", data=False)
    def _jmp(self, v: dict) -> int:
        return v["target"]

    @_executes("LDR", data=False)  # a job word may steer control flow
    def _ldr(self, v: dict) -> None:
        self._setr(v["rd"], int(self.image.read_i32(int(v["addr"]))[0]))

    @_executes("TOKOUT", data=False)  # the host reads tokens in timing-only runs too
    def _tokout(self, v: dict) -> None:
        self.image.write_i32(int(v["addr"]), [self.regs[v["ra"]]])

    @_executes("LOADV")
    def _loadv(self, v: dict) -> None:
        self._set_vec(v, "dst", self.image.read_vector(int(v["src"]), self._vlen(int(v["len"]))))

    @_executes("STOREV")
    def _storev(self, v: dict) -> None:
        self.image.write_vector(int(v["dst"]), self._vec(v, "src", v["len"]))

    @_executes("LOADR")
    def _loadr(self, v: dict) -> None:
        row = self.image.read_matrix(int(v["mat"]), v["ldb"], 1, self._vlen(int(v["len"])),
                                     int(v["row"]))
        self._set_vec(v, "dst", row.reshape(-1))

    @_executes("STORER")
    def _storer(self, v: dict) -> None:
        self.image.write_row(int(v["mat"]), v["ldb"], int(v["row"]), self._vec(v, "src", v["len"]))

    @_executes("STOREC")
    def _storec(self, v: dict) -> None:
        self.image.write_column(int(v["mat"]), v["ldb"], int(v["col"]),
                                self._vec(v, "src", v["len"]))

    @_executes("PREFETCH", data=False)  # the queue is checked in timing-only runs too
    def _prefetch(self, v: dict) -> None:
        if len(self._pending_prefetch) >= self.config.prefetch_queue:
            raise DeviceError(f"device {self.index} pc {self.pc}: PREFETCH with "
                              f"{len(self._pending_prefetch)} matrices already waiting; the "
                              f"prefetcher holds prefetch_queue={self.config.prefetch_queue}")
        self._pending_prefetch.append((int(v["w"]), v["ldb"], int(v["rows"]), int(v["cols"])))

    @_executes("MM", data=False)  # matches its PREFETCH in timing-only runs too
    def _mm(self, v: dict) -> None:
        key = (int(v["w"]), v["ldb"], int(v["rows"]), int(v["cols"]))
        if self.mm_reads is not None:
            self.mm_reads.append(key[0])
        if "prefetched" in v["flags"]:
            oldest = self._pending_prefetch[0] if self._pending_prefetch else None
            if oldest != key:
                raise DeviceError(f"device {self.index} pc {self.pc}: MM flags=prefetched "
                                  f"reads {key} but the oldest pending PREFETCH is {oldest}")
            self._pending_prefetch.pop(0)
        if not self.functional:
            return
        rows, cols, ntok = int(v["rows"]), int(v["cols"]), int(v["ntok"])
        if "prefetched" in v["flags"]:
            weights = self._weights.get(key)
            if weights is None:  # weights are read-only: decode them once
                weights = self._weights[key] = self.image.read_matrix(key[0], key[1], rows,
                                                                      cols)
        else:
            weights = self.image.read_matrix(key[0], key[1], rows, cols)
        bias = self._vec(v, "bias", rows)[:rows] if "bias" in v["flags"] else None
        align = self.config.align
        padded = round_up(rows, align)
        for t in range(ntok):
            src = int(v["src"]) + t * int(v["sstride"])
            x = self.buffer[self._vrange(src, cols, "MM src")]
            y32 = nx.matvec(weights, x, self.config.lane_width)
            y = nx.vadd(y32, bias) if bias is not None else nx.round_fp16(y32)
            dst = int(v["dst"]) + t * int(v["dstride"])
            if "mask" in v["flags"]:
                y = np.concatenate([y, np.full(padded - rows, -np.inf, np.float16)])
            self.buffer[self._vrange(dst, len(y), "MM dst")] = y

    @_executes("VADD")
    def _vadd(self, v: dict) -> None:
        n = v["len"]
        self._set_vec(v, "dst", nx.vadd(self._vec(v, "a", n), self._vec(v, "b", n)))

    @_executes("VMUL")
    def _vmul(self, v: dict) -> None:
        n = v["len"]
        self._set_vec(v, "dst", nx.vmul(self._vec(v, "a", n), self._vec(v, "b", n)))

    @_executes("VFMA")
    def _vfma(self, v: dict) -> None:
        n = v["len"]
        self._set_vec(v, "dst", nx.vfma(self._vec(v, "a", n), self._vec(v, "b", n),
                                        self._vec(v, "c", n)))

    @_executes("VADDS")
    def _vadds(self, v: dict) -> None:
        s = self.sregs[v["s"]]
        s = -s if "neg" in v["flags"] else s
        self._set_vec(v, "dst", nx.vadd(self._vec(v, "a", v["len"]), np.float32(s)))

    @_executes("VMULS")
    def _vmuls(self, v: dict) -> None:
        r = nx.round_fp16(self.sregs[v["s"]])
        self._set_vec(v, "dst", nx.vmul(self._vec(v, "a", v["len"]), r))

    @_executes("VEXP")
    def _vexp(self, v: dict) -> None:
        self._set_vec(v, "dst", nx.exp(self._vec(v, "a", v["len"])))

    @_executes("VGELU")
    def _vgelu(self, v: dict) -> None:
        self._set_vec(v, "dst", nx.gelu(self._vec(v, "a", v["len"])))

    @_executes("VSUM")
    def _vsum(self, v: dict) -> None:
        self.sregs[v["sd"]] = nx.reduce_sum(self._vec(v, "a", v["len"]),
                                            self.config.vector_width)

    @_executes("VMAX")
    def _vmax(self, v: dict) -> None:
        self.sregs[v["sd"]] = nx.widen(nx.reduce_max(self._vec(v, "a", v["len"]),
                                                     self.config.vector_width))

    @_executes("VDOT")
    def _vdot(self, v: dict) -> None:
        n = v["len"]
        self.sregs[v["sd"]] = nx.dot(self._vec(v, "a", n), self._vec(v, "b", n),
                                     self.config.vector_width)

    @_executes("ARGMAX", data=False)  # its index register may steer control flow
    def _argmax(self, v: dict) -> None:
        if not self.functional:  # no data: the first index
            self._setr(v["rd"], int(v["base"]))
            return
        n = int(v["len"])
        x = self._vec(v, "a", n)
        if self.argmax_inputs is not None and self.argmax_pc in (None, self.pc):
            self.argmax_inputs.append(x[:n].copy())
        idx = int(np.argmax(x.astype(np.float32)))
        self._setr(v["rd"], int(v["base"]) + idx)
        self.sregs[v["sd"]] = np.float32(x[idx])

    @_executes("VSET")
    def _vset(self, v: dict) -> None:
        self.buffer[self._vrange(int(v["dst"]), 1, "VSET")] = nx.round_fp16(self.sregs[v["s"]])

    @_executes("VGET")
    def _vget(self, v: dict) -> None:
        self.sregs[v["sd"]] = nx.widen(self.buffer[self._vrange(int(v["src"]), 1, "VGET")])[0]

    @_executes("SLI")
    def _sli(self, v: dict) -> None:
        self.sregs[v["sd"]] = np.float32(v["imm"])

    @_executes("SMULI")
    def _smuli(self, v: dict) -> None:
        self.sregs[v["sd"]] = nx.mul32(self.sregs[v["sa"]], np.float32(v["imm"]))

    @_executes("SADDH")
    def _saddh(self, v: dict) -> None:
        self.sregs[v["sd"]] = nx.widen(nx.vadd(self.sregs[v["sa"]], np.float16(v["imm"])))

    @_executes("SRECIP")
    def _srecip(self, v: dict) -> None:
        self.sregs[v["sd"]] = nx.widen(nx.reciprocal(nx.round_fp16(self.sregs[v["sa"]])))

    @_executes("SRSQRT")
    def _srsqrt(self, v: dict) -> None:
        self.sregs[v["sd"]] = nx.widen(nx.rsqrt(nx.round_fp16(self.sregs[v["sa"]])))


assert set(_EXECUTE) == set(OPCODES) - RING_OPS, \
    f"opcodes without an execution function: {sorted(set(OPCODES) - RING_OPS - set(_EXECUTE))}"
