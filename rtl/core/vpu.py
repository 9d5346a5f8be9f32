"""`Vpu`: the vector unit: elementwise instructions, special functions, reductions, VSET and
VGET, bit-exact with `hw.isasim.device.IsaDevice._vector` (through `rtl.arith`).

An instruction is read beat by beat (`align` words; vectors are rounded up to whole beats as
the instruction-level simulator rounds them) through up to three read ports, one per operand.
The next instruction may start reading as soon as this one has read its last beat, so
instructions pipeline; only reductions wait for the previous reduction's result.

- Elementwise (VADD, VMUL, VFMA, VADDS, VMULS, VSET): one datapath per word,
  round_fp16(add32(p, q)) with p = mul16(a, m): VADD a+b (m = 1.0, q = b), VMUL (m = b,
  q = -0), VFMA (m = b, q = c), VADDS (m = 1.0, q = +-s), VMULS (m = round_fp16(s), q = -0),
  VSET (p = s, q = -0). Multiplying by 1.0 and adding -0 are exact, so each is the numerics
  model's formula.
- Special functions (VEXP, VGELU): `sfu_width` Exp and Gelu units; a beat wider than that
  passes through them in `align / sfu_width` cycles.
- Reductions: VSUM and VDOT on a `DotLane` (VSUM against ones: `reduce_sum` of FP16 data is
  `dot(x, 1)`), VMAX on a `MaxLane`, ARGMAX on `ArgMax`; a single row, so the lane's adder
  loop takes ADD_LATENCY cycles per beat. VGET widens one word.

Elementwise and special-function beats share one pipeline of `PIPE_LATENCY` stages, so their
results leave in order; the write port's back-pressure stalls it whole.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from rtl import arith
from rtl.arith.add import NEG_ZERO
from rtl.arith.pipeline import Regs

from . import ops
from .argmax import ArgMax
from .controller import write_back_layout
from .vbuf import VbufReader, read_port_signature, write_port_signature

__all__ = ["PIPE_LATENCY", "Vpu"]

#: Stages of the shared elementwise / special-function pipeline (Exp's 9, the longest).
PIPE_LATENCY = 9
_ONE16 = 0x3C00

_CLASSES = {"ew": 0, "sfu": 1, "dot": 2, "max": 3, "arg": 4, "get": 5}
_CLASS_OF = {**dict.fromkeys(("VADD", "VMUL", "VFMA", "VADDS", "VMULS", "VSET"), "ew"),
             "VEXP": "sfu", "VGELU": "sfu", "VSUM": "dot", "VDOT": "dot", "VMAX": "max",
             "ARGMAX": "arg", "VGET": "get"}
_OPERANDS = {"VADD": "ab", "VMUL": "ab", "VFMA": "abc", "VADDS": "a", "VMULS": "a", "VSET": "",
             "VEXP": "a", "VGELU": "a", "VSUM": "a", "VDOT": "ab", "VMAX": "a", "ARGMAX": "a",
             "VGET": "a"}


class _Comb:
    """A `Regs` stand-in that registers nothing, for a datapath builder used combinationally."""

    def __init__(self, m: Module):
        self.m = m
        self.en = Const(1, 1)

    def __call__(self, value, name=None):
        return value

    def many(self, **values):
        return SimpleNamespace(**values)


class Vpu(wiring.Component):
    def __init__(self, cfg: AccelConfig, uop_layout, *, block_bits: int, sb_entries: int):
        a, s = cfg.align, cfg.sfu_width
        if a % s:
            raise ValueError(f"sfu_width ({s}) must divide align ({a})")
        self.cfg = cfg
        self.align = a
        self.sfu = s
        self.block_bits = block_bits
        self.sb_entries = sb_entries
        self._uop = uop_layout
        pc = uop_layout["pc"].shape
        super().__init__({
            "uop": In(stream.Signature(uop_layout)),
            "read": Out(read_port_signature(block_bits, a)).array(3),
            "write": Out(write_port_signature(block_bits, a)),
            "int_wb": Out(write_back_layout()),
            "scalar_wb": Out(write_back_layout()),
            "release_reads": Out(sb_entries),
            "release_write": Out(sb_entries),
            "retire": Out(2),
            "retire_pc": Out(pc).array(2),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        A, S = self.align, self.sfu
        R = A // S  # passes of a beat through the special-function units
        log_a = A.bit_length() - 1
        u = self.uop.payload
        bb = self.block_bits

        def is_op(op_sig, *names):
            out = Const(0, 1)
            for n in names:
                out = out | (op_sig == ops.CODES[n])
            return out

        # -- records: what the executor needs of each instruction, in order ------------------
        rec_layout = data.StructLayout({
            "op": 8, "cls": 3, "beats": 21, "dst": bb, "word": log_a or 1, "s": 32, "neg": 1,
            "sd": 4, "rd": 4, "base": 32, "pc": _bits(self._uop, "pc"),
            "sb": _bits(self._uop, "sb"), "write": 1,
        })
        records = fifo.SyncFIFOBuffered(width=rec_layout.size, depth=4)
        m.submodules.records = records
        readers = [VbufReader(bb, A, depth=4) for _ in range(3)]
        for k, r in enumerate(readers):
            m.submodules[f"reader{k}"] = r
            wiring.connect(m, r.port, wiring.flipped(self.read[k]))

        cls_of_new = Signal(3)
        for op, cls in _CLASS_OF.items():
            with m.If(u.op == ops.CODES[op]):
                m.d.comb += cls_of_new.eq(_CLASSES[cls])
        is_red_new = cls_of_new >= _CLASSES["dot"]

        # -- accept and read -----------------------------------------------------------------
        cur_valid = Signal()
        cur_beats = Signal(21)
        cur_blocks = [Signal(bb + 1, name=f"cur_blk{k}") for k in range(3)]
        cur_need = Signal(3)
        cur_sb = Signal(_bits(self._uop, "sb"))
        issued = [Signal(21, name=f"issued{k}") for k in range(3)]
        red_busy = Signal()  # a reduction accepted and its result not yet written back
        red_done = Signal()

        m.d.comb += self.uop.ready.eq(~cur_valid & records.w_rdy & ~(is_red_new & red_busy))
        length = Mux(is_op(u.op, "VSET", "VGET"), A, u.len)
        beats = Signal(21)
        m.d.comb += beats.eq((length + (A - 1)) >> log_a)
        new_rec = Signal(rec_layout)
        is_vget = is_op(u.op, "VGET")
        m.d.comb += [
            new_rec.op.eq(u.op), new_rec.cls.eq(cls_of_new), new_rec.beats.eq(beats),
            new_rec.dst.eq(u.dst >> log_a), new_rec.word.eq(Mux(is_vget, u.src, u.dst)),
            new_rec.s.eq(u.s_v), new_rec.neg.eq(u.flags[0]), new_rec.sd.eq(u.sd),
            new_rec.rd.eq(u.rd), new_rec.base.eq(u.base), new_rec.pc.eq(u.pc),
            new_rec.sb.eq(u.sb), new_rec.write.eq(cls_of_new <= _CLASSES["sfu"]),
            records.w_data.eq(new_rec),
        ]
        need = Signal(3)
        for op, names in _OPERANDS.items():
            with m.If(u.op == ops.CODES[op]):
                m.d.comb += need.eq(sum(1 << "abc".index(n) for n in names))
        accept = self.uop.valid & self.uop.ready
        with m.If(accept):
            m.d.comb += records.w_en.eq(1)
            m.d.sync += [cur_valid.eq(1), cur_beats.eq(beats), cur_need.eq(need),
                         cur_sb.eq(u.sb),
                         cur_blocks[0].eq(Mux(is_vget, u.src, u.a) >> log_a),
                         cur_blocks[1].eq(u.b >> log_a), cur_blocks[2].eq(u.c >> log_a)]
            m.d.sync += [i.eq(0) for i in issued]
            with m.If(is_red_new):
                m.d.sync += red_busy.eq(1)
        with m.If(red_done):
            m.d.sync += red_busy.eq(0)
        all_read = Signal()
        done_k = []
        for k in range(3):
            req = readers[k].req
            pending = cur_valid & cur_need[k] & (issued[k] != cur_beats)
            m.d.comb += [req.valid.eq(pending), req.payload.eq(cur_blocks[k] + issued[k])]
            with m.If(req.valid & req.ready):
                m.d.sync += issued[k].eq(issued[k] + 1)
            done_k.append(~cur_need[k] | (issued[k] == cur_beats))
        m.d.comb += all_read.eq(cur_valid & done_k[0] & done_k[1] & done_k[2])
        with m.If(all_read):
            m.d.sync += cur_valid.eq(0)
            m.d.comb += self.release_reads.eq(1 << cur_sb)

        # -- execute -------------------------------------------------------------------------
        rec = rec_layout(records.r_data)
        rec_valid = records.r_rdy
        j = Signal(21)  # beat of the head record
        sub = Signal(range(max(R, 2)))  # pass of a beat through the special functions
        last_beat = j + 1 == rec.beats
        opnd = [readers[k].resp for k in range(3)]
        rec_need = Signal(3)
        for op, names in _OPERANDS.items():
            with m.If(rec.op == ops.CODES[op]):
                m.d.comb += rec_need.eq(sum(1 << "abc".index(n) for n in names))
        have = Signal()
        m.d.comb += have.eq(rec_valid & (~rec_need[0] | opnd[0].valid)
                            & (~rec_need[1] | opnd[1].valid) & (~rec_need[2] | opnd[2].valid))

        en = Signal()  # the elementwise / special-function pipeline advances
        regs = Regs(m, en, "vpu")
        is_pipe = rec.cls <= _CLASSES["sfu"]
        is_sfu = rec.cls == _CLASSES["sfu"]
        inject = Signal()
        m.d.comb += inject.eq(en & have & is_pipe)
        pop_pipe = inject & (~is_sfu | (sub == R - 1))

        # element datapaths
        comb = _Comb(m)
        s16 = arith.round32to16(m, comb, rec.s)
        in_a = opnd[0].payload
        in_b = opnd[1].payload
        in_c = opnd[2].payload
        m_sel = Signal(2)  # 0: b, 1: one, 2: round16(s)
        q_sel = Signal(3)  # 0: widen b, 1: widen c, 2: s, 3: -s, 4: -0, 5: p is s (VSET)
        for op, ms, qs in (("VADD", 1, 0), ("VMUL", 0, 4), ("VFMA", 0, 1), ("VMULS", 2, 4),
                           ("VSET", 1, 5)):
            with m.If(rec.op == ops.CODES[op]):
                m.d.comb += [m_sel.eq(ms), q_sel.eq(qs)]
        with m.If(rec.op == ops.CODES["VADDS"]):
            m.d.comb += [m_sel.eq(1), q_sel.eq(Mux(rec.neg, 3, 2))]
        s2 = regs(regs(rec.s, "s1"), "s2")
        qsel2 = regs(regs(q_sel, "q1"), "q2")
        ew_out = []
        for e in range(A):
            av = in_a[16 * e:16 * e + 16]
            bv = in_b[16 * e:16 * e + 16]
            cv = in_c[16 * e:16 * e + 16]
            mv = Mux(m_sel == 0, bv, Mux(m_sel == 1, _ONE16, s16))
            p = arith.mul16(m, regs, av, mv)
            qw = regs(arith.widen16(m, regs, Mux(q_sel == 1, cv, bv)), "qw")
            q = Mux(qsel2 <= 1, qw, Mux(qsel2 == 2, s2, Mux(qsel2 == 3, s2 ^ (1 << 31),
                                                               NEG_ZERO)))
            pv = Mux(qsel2 == 5, s2, p)
            total = arith.add32(m, regs, pv, q)
            ew_out.append(regs(arith.round32to16(m, regs, total), "ew_pad"))
        # special functions: pass `sub` takes words [sub*S, (sub+1)*S)
        sfu_out = []
        for e in range(S):
            word = Signal(16, name=f"sfu_in{e}")
            m.d.comb += word.eq(in_a.word_select(sub * S + e, 16) if R > 1 else in_a[16 * e:
                                                                                       16 * e + 16])
            ex, ge = arith.Exp(), arith.Gelu()
            m.submodules[f"exp{e}"] = ex
            m.submodules[f"gelu{e}"] = ge
            for unit in (ex, ge):
                m.d.comb += [unit.i.valid.eq(1), unit.o.ready.eq(en), unit.i.payload.eq(word)]
            assert ex.latency == PIPE_LATENCY
            assert ge.latency == PIPE_LATENCY - 1
            sfu_out.append((ex.o.payload, regs(ge.o.payload, "gelu_pad")))

        # beat metadata through the pipeline
        meta = SimpleNamespace(valid=inject, write=pop_pipe & rec.write,
                               last=pop_pipe & last_beat, sfu=is_sfu,
                               exp=rec.op == ops.CODES["VEXP"],
                               vset=rec.op == ops.CODES["VSET"], sub=sub,
                               block=rec.dst + j, word=rec.word, sb=rec.sb, pc=rec.pc)
        valid_chain = []
        for _ in range(PIPE_LATENCY):
            meta = SimpleNamespace(**{k: regs(v, k) for k, v in vars(meta).items()})
            valid_chain.append(meta.valid)
        out_valid = meta.valid
        out_write = out_valid & meta.write
        parts = Signal(16 * A)
        sfu_word = Cat(*[Mux(meta.exp, ex, ge) for ex, ge in sfu_out])
        if R > 1:
            held = Signal(16 * A - 16 * S)
            with m.If(en & out_valid & meta.sfu):
                m.d.sync += held.word_select(meta.sub, 16 * S).eq(sfu_word)
            m.d.comb += parts.eq(Cat(held, sfu_word))
        else:
            m.d.comb += parts.eq(sfu_word)
        wdata = Mux(meta.sfu, parts, Cat(*ew_out))
        w = self.write.req
        m.d.comb += [
            w.valid.eq(out_write), w.payload.block.eq(meta.block), w.payload.data.eq(wdata),
            w.payload.mask.eq(Mux(meta.vset, 1 << meta.word, (1 << A) - 1)),
            en.eq(~(out_write & ~w.ready)),
        ]
        # (each output signal assigned whole: Verilator 5.48 mis-schedules a combinational
        # block that assigns one bit conditionally and another unconditionally)
        ew_retire = Signal()
        m.d.comb += ew_retire.eq(en & out_valid & meta.last)
        with m.If(ew_retire):
            m.d.comb += [self.release_write.eq(1 << meta.sb), self.retire_pc[0].eq(meta.pc)]

        # -- reductions ----------------------------------------------------------------------
        dot = arith.DotLane(A)
        mx = arith.MaxLane(A)
        arg = ArgMax(A)
        m.submodules.dot = dot
        m.submodules.max = mx
        m.submodules.argmax = arg
        first = j == 0
        red_in = have & ~is_pipe
        units = {"dot": dot, "max": mx, "arg": arg}
        m.d.comb += [
            dot.i.payload.a.eq(in_a),
            dot.i.payload.b.eq(Mux(rec.op == ops.CODES["VDOT"], in_b,
                                   Cat(*[Const(_ONE16, 16)] * A))),
            dot.i.payload.row.eq(0),
            mx.i.payload.data.eq(in_a), arg.i.payload.data.eq(in_a),
        ]
        taken_red = Signal()
        for name, unit in units.items():
            m.d.comb += [unit.i.payload.first.eq(first), unit.i.payload.last.eq(last_beat),
                         unit.i.valid.eq(red_in & (rec.cls == _CLASSES[name]))]
            with m.If(unit.i.valid & unit.i.ready):
                m.d.comb += taken_red.eq(1)
        is_get = rec.cls == _CLASSES["get"]
        with m.If(red_in & is_get):
            m.d.comb += taken_red.eq(1)
        # the reduction's result, written back when it arrives
        red_rec = Signal(rec_layout)  # the reduction in flight
        with m.If(taken_red & first):
            m.d.sync += red_rec.eq(rec)
        widen_in = Signal(16)
        widened = arith.widen16(m, comb, widen_in)
        get_word = Signal(16)
        m.d.comb += get_word.eq(in_a.word_select(rec.word, 16))
        get_done = Signal()
        get_value = Signal(32)
        with m.If(red_in & is_get):
            m.d.sync += [get_done.eq(1), get_value.eq(arith.widen16(m, comb, get_word))]
        with m.Else():
            m.d.sync += get_done.eq(0)
        m.d.comb += [dot.o.ready.eq(1), mx.o.ready.eq(1), arg.o.ready.eq(1)]
        value = Signal(32)
        with m.If(dot.o.valid):
            m.d.comb += [value.eq(dot.o.payload), red_done.eq(1)]
        with m.If(mx.o.valid):
            m.d.comb += [widen_in.eq(mx.o.payload), value.eq(widened), red_done.eq(1)]
        with m.If(arg.o.valid):
            m.d.comb += [widen_in.eq(arg.o.payload.value), value.eq(widened), red_done.eq(1),
                         self.int_wb.valid.eq(1), self.int_wb.idx.eq(red_rec.rd),
                         self.int_wb.value.eq(red_rec.base + arg.o.payload.index)]
        with m.If(get_done):
            m.d.comb += [value.eq(get_value), red_done.eq(1)]
        m.d.comb += [self.scalar_wb.valid.eq(red_done), self.scalar_wb.idx.eq(red_rec.sd),
                     self.scalar_wb.value.eq(value), self.retire.eq(Cat(ew_retire, red_done)),
                     self.retire_pc[1].eq(red_rec.pc)]

        # -- consume operands and advance ----------------------------------------------------
        step = Signal()  # this beat of the head record is done
        m.d.comb += step.eq(pop_pipe | taken_red)
        with m.If(step):
            for k in range(3):
                m.d.comb += opnd[k].ready.eq(rec_need[k])
            m.d.sync += j.eq(j + 1)
            with m.If(last_beat):
                m.d.sync += j.eq(0)
                m.d.comb += records.r_en.eq(1)
        if R > 1:
            with m.If(inject & is_sfu):
                m.d.sync += sub.eq(Mux(sub == R - 1, 0, sub + 1))
        m.d.comb += self.idle.eq(~cur_valid & (records.level == 0) & ~red_busy
                                 & ~_or(valid_chain))
        return m


def _bits(layout, name: str) -> int:
    return Shape.cast(layout[name].shape).width


def _or(values):
    out = Const(0, 1)
    for v in values:
        out = out | v
    return out
