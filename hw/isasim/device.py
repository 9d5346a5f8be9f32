"""`IsaDevice`: one accelerator executing its program instruction by instruction.

Functionally exact: every arithmetic instruction calls the `hw.numerics` function of its unit,
so results are the RTL's results bit for bit. Timing comes from `hw.perf`: each instruction is
placed on the device's `Timeline`. A device stops at ring instructions; `IsaCluster` resolves
them across all devices.

In timing-only mode (`functional=False`) no arithmetic runs and no vector buffer exists; control
flow and addresses still execute, so the instruction stream, and so the timing, is the same.
"""

from __future__ import annotations

import numpy as np

from hw import numerics as nx
from hw.config import AccelConfig
from hw.hbm import HbmImage
from hw.intmath import round_up
from hw.isa import KINDS, OPCODES, Instr, resolve
from hw.perf import Cost, Footprint, Timeline, footprint, op_cost

__all__ = ["RING_OPS", "DeviceError", "IsaDevice"]

RING_OPS = {"ALLGATHER", "ARGMAXALL", "SYNC"}
_BRANCHES = {"BLT": lambda a, b: a < b, "BGE": lambda a, b: a >= b,
             "BEQ": lambda a, b: a == b, "BNE": lambda a, b: a != b}


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

    def _vec(self, v: dict, name: str, length: int) -> np.ndarray:
        n = round_up(int(length), self.config.align)
        return self.vbuf[self._vrange(int(v[name]), n, name)]

    def _set_vec(self, v: dict, name: str, values: np.ndarray) -> None:
        self.vbuf[self._vrange(int(v[name]), len(values), name)] = values

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
        next_pc = self.pc + 1
        regs = self.regs
        if op in _BRANCHES:
            if _BRANCHES[op](regs[v["ra"]], regs[v["rb"]]):
                next_pc = v["target"]
        elif op == "JMP":
            next_pc = v["target"]
        elif op == "HALT":
            self.halted = True
        elif op == "LI":
            self._setr(v["rd"], v["imm"])
        elif op == "ADDI":
            self._setr(v["rd"], regs[v["ra"]] + v["imm"])
        elif op == "ADD":
            self._setr(v["rd"], regs[v["ra"]] + regs[v["rb"]])
        elif op == "SUB":
            self._setr(v["rd"], regs[v["ra"]] - regs[v["rb"]])
        elif op == "MUL":
            self._setr(v["rd"], regs[v["ra"]] * regs[v["rb"]])
        elif op == "MULI":
            self._setr(v["rd"], regs[v["ra"]] * v["imm"])
        elif op == "MIN":
            self._setr(v["rd"], min(regs[v["ra"]], regs[v["rb"]]))
        elif op == "LDR":
            self._setr(v["rd"], int(self.image.read_i32(int(v["addr"]))[0]))
        elif op == "TOKOUT":
            self.image.write_i32(int(v["addr"]), [regs[v["ra"]]])
        elif op == "PREFETCH":
            if len(self._pending_prefetch) >= self.config.prefetch_queue:
                raise DeviceError(f"device {self.index} pc {self.pc}: PREFETCH with "
                                  f"{len(self._pending_prefetch)} matrices already waiting; the "
                                  f"prefetcher holds prefetch_queue={self.config.prefetch_queue}")
            self._pending_prefetch.append((int(v["w"]), v["ldb"], int(v["rows"]),
                                           int(v["cols"])))
        elif op == "MM":
            self._mm(v)
        elif self.functional:
            self._vector(op, v)
        elif op in ("ARGMAX",):
            self._setr(v["rd"], int(v["base"]))
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
            x = self.vbuf[self._vrange(src, cols, "MM src")]
            y32 = nx.matvec(weights, x, self.config.lane_width)
            y = nx.vadd(y32, bias) if bias is not None else nx.round_fp16(y32)
            dst = int(v["dst"]) + t * int(v["dstride"])
            if "mask" in v["flags"]:
                y = np.concatenate([y, np.full(padded - rows, -np.inf, np.float16)])
            self.vbuf[self._vrange(dst, len(y), "MM dst")] = y

    def _vector(self, op: str, v: dict) -> None:
        cfg = self.config
        width = cfg.vector_width
        n = int(v.get("len", 0))
        if op == "LOADV":
            self._set_vec(v, "dst", self.image.read_vector(int(v["src"]), self._len(n)))
        elif op == "STOREV":
            self.image.write_vector(int(v["dst"]), self._vec(v, "src", n))
        elif op == "LOADR":
            row = self.image.read_matrix(int(v["mat"]), v["ldb"], 1, self._len(n), int(v["row"]))
            self._set_vec(v, "dst", row.reshape(-1))
        elif op == "STORER":
            self.image.write_row(int(v["mat"]), v["ldb"], int(v["row"]), self._vec(v, "src", n))
        elif op == "STOREC":
            self.image.write_column(int(v["mat"]), v["ldb"], int(v["col"]),
                                    self._vec(v, "src", n))
        elif op == "VADD":
            self._set_vec(v, "dst", nx.vadd(self._vec(v, "a", n), self._vec(v, "b", n)))
        elif op == "VMUL":
            self._set_vec(v, "dst", nx.vmul(self._vec(v, "a", n), self._vec(v, "b", n)))
        elif op == "VFMA":
            self._set_vec(v, "dst", nx.vfma(self._vec(v, "a", n), self._vec(v, "b", n),
                                            self._vec(v, "c", n)))
        elif op == "VADDS":
            s = self.sregs[v["s"]]
            s = -s if "neg" in v["flags"] else s
            self._set_vec(v, "dst", nx.vadd(self._vec(v, "a", n), np.float32(s)))
        elif op == "VMULS":
            r = nx.round_fp16(self.sregs[v["s"]])
            self._set_vec(v, "dst", nx.vmul(self._vec(v, "a", n), r))
        elif op == "VEXP":
            self._set_vec(v, "dst", nx.exp(self._vec(v, "a", n)))
        elif op == "VGELU":
            self._set_vec(v, "dst", nx.gelu(self._vec(v, "a", n)))
        elif op == "VSUM":
            self.sregs[v["sd"]] = nx.reduce_sum(self._vec(v, "a", n), width)
        elif op == "VMAX":
            self.sregs[v["sd"]] = nx.widen(nx.reduce_max(self._vec(v, "a", n), width))
        elif op == "VDOT":
            self.sregs[v["sd"]] = nx.dot(self._vec(v, "a", n), self._vec(v, "b", n), width)
        elif op == "ARGMAX":
            x = self._vec(v, "a", n)
            if self.argmax_inputs is not None and self.argmax_pc in (None, self.pc):
                self.argmax_inputs.append(x[:n].copy())
            idx = int(np.argmax(x.astype(np.float32)))
            self._setr(v["rd"], int(v["base"]) + idx)
            self.sregs[v["sd"]] = np.float32(x[idx])
        elif op == "VSET":
            self.vbuf[self._vrange(int(v["dst"]), 1, "VSET")] = nx.round_fp16(
                self.sregs[v["s"]])
        elif op == "VGET":
            self.sregs[v["sd"]] = nx.widen(self.vbuf[self._vrange(int(v["src"]), 1, "VGET")])[0]
        elif op == "SLI":
            self.sregs[v["sd"]] = np.float32(v["imm"])
        elif op == "SMULI":
            self.sregs[v["sd"]] = nx.mul32(self.sregs[v["sa"]], np.float32(v["imm"]))
        elif op == "SADDH":
            self.sregs[v["sd"]] = nx.widen(nx.vadd(self.sregs[v["sa"]], np.float16(v["imm"])))
        elif op == "SRECIP":
            self.sregs[v["sd"]] = nx.widen(nx.reciprocal(nx.round_fp16(self.sregs[v["sa"]])))
        elif op == "SRSQRT":
            self.sregs[v["sd"]] = nx.widen(nx.rsqrt(nx.round_fp16(self.sregs[v["sa"]])))
        elif op != "NOP":
            raise DeviceError(f"device {self.index} pc {self.pc}: no semantics for {op}")

    def _len(self, n: int) -> int:
        return round_up(n, self.config.align)
