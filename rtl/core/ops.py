"""What the core needs to know about each opcode, derived from `hw.isa` and `hw.perf` rather
than typed again: the micro-op layout and the instruction decoder (from `OPCODES` and
`field_layout`), the engine each opcode runs on and the registers it reads and writes (by
probing `hw.perf.op_cost` and `hw.perf.footprint` with distinct register numbers), and the
vector-buffer ranges the scoreboard tracks (`VRANGES`, checked against `hw.perf.footprint` by
the tests).

A micro-op (`uop_layout`) carries one member per operand name of the instruction set: indexed
operands (vaddr, haddr, count) resolved to 32 bits (immediate plus index register), register
operands as their number plus, for the ones read, the register's value (`<name>_v`), the
other immediates as their raw bits.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Value
from amaranth.lib import data

from hw.config import PRESETS
from hw.isa import KINDS, OPCODE_BITS, OPCODES, REG_BITS, field_layout
from hw.perf import footprint, op_cost

__all__ = [
    "CODES",
    "ENGINES",
    "FIELDS",
    "INDEXED",
    "REG_READS",
    "REG_WRITES",
    "SREG_READS",
    "SREG_WRITES",
    "VRANGES",
    "decode_fields",
    "decoded_layout",
    "flag_bit",
    "uop_layout",
    "up",
]

CODES: dict[str, int] = {name: spec.code for name, spec in OPCODES.items()}


def _field_classes() -> dict[str, tuple[str, int]]:
    """operand name -> (class, bits): class is indexed | reg | sreg | imm."""
    out: dict[str, tuple[str, int]] = {}
    for spec in OPCODES.values():
        for name, kind_name in spec.fields:
            kind = KINDS[kind_name]
            if kind.has_reg:
                cls, bits = "indexed", 32
            elif kind.fmt in ("reg", "sreg"):
                cls, bits = kind.fmt, REG_BITS
            else:
                cls, bits = "imm", kind.imm_bits
            old = out.get(name)
            if old is not None and old[0] != cls:
                raise AssertionError(f"operand {name} is {old[0]} and {cls} in different ops")
            out[name] = (cls, max(bits, old[1] if old else 0))
    return out


#: operand name -> (class, bits of the micro-op member)
FIELDS: dict[str, tuple[str, int]] = _field_classes()
INDEXED = [n for n, (c, _) in FIELDS.items() if c == "indexed"]


def _probe() -> tuple[dict, dict, dict, dict, dict]:
    """Engines and register use of every opcode, read off the timing model's own tables."""
    cfg = PRESETS["tiny"]
    engines, rr, rw, sr, sw = {}, {}, {}, {}, {}
    for op, spec in OPCODES.items():
        values, by_number = {}, {}
        number = 1
        for name, kind_name in spec.fields:
            kind = KINDS[kind_name]
            if kind.fmt in ("reg", "sreg"):
                values[name] = number
                by_number[number] = name
                number += 1
            elif kind.fmt == "flags":
                values[name] = frozenset()
            else:
                values[name] = 8
        engines[op] = op_cost(op, values, cfg).engine
        fp = footprint(op, values, cfg)
        rr[op] = tuple(by_number[r] for r in fp.rreads)
        rw[op] = tuple(by_number[r] for r in fp.rwrites)
        sr[op] = tuple(by_number[s] for s in fp.sreads)
        sw[op] = tuple(by_number[s] for s in fp.swrites)
    return engines, rr, rw, sr, sw


#: opcode -> engine (ctrl, dma, mpu, pref, vpu, scalar, ring), as `hw.perf` times it
ENGINES, REG_READS, REG_WRITES, SREG_READS, SREG_WRITES = _probe()
_READ_REGS = sorted({n for names in REG_READS.values() for n in names}
                    | {n for names in SREG_READS.values() for n in names})


def flag_bit(op: str, flag: str) -> int:
    return OPCODES[op].flags.index(flag)


def up(x, align: int):
    """x rounded up to a multiple of `align` (ints and Amaranth values alike)."""
    return (x + (align - 1)) & ~(align - 1)


#: Vector-buffer ranges per opcode, in words: (role r|w, start operand, length(v, align,
#: devices), flag that enables it or None). The scoreboard rounds them out to whole blocks.
VRANGES: dict[str, list[tuple]] = {
    "LOADV": [("w", "dst", lambda v, a, d: up(v.len, a), None)],
    "LOADR": [("w", "dst", lambda v, a, d: up(v.len, a), None)],
    "STOREV": [("r", "src", lambda v, a, d: up(v.len, a), None)],
    "STORER": [("r", "src", lambda v, a, d: up(v.len, a), None)],
    "STOREC": [("r", "src", lambda v, a, d: up(v.len, a), None)],
    "MM": [("r", "src", lambda v, a, d: (v.ntok - 1) * v.sstride + up(v.cols, a), None),
           ("w", "dst", lambda v, a, d: (v.ntok - 1) * v.dstride + up(v.rows, a), None),
           ("r", "bias", lambda v, a, d: up(v.rows, a), "bias")],
    **{op: [("r", "a", lambda v, a, d: up(v.len, a), None),
            ("r", "b", lambda v, a, d: up(v.len, a), None),
            ("w", "dst", lambda v, a, d: up(v.len, a), None)] for op in ("VADD", "VMUL")},
    "VFMA": [("r", name, lambda v, a, d: up(v.len, a), None) for name in "abc"]
    + [("w", "dst", lambda v, a, d: up(v.len, a), None)],
    **{op: [("r", "a", lambda v, a, d: up(v.len, a), None),
            ("w", "dst", lambda v, a, d: up(v.len, a), None)]
       for op in ("VADDS", "VMULS", "VEXP", "VGELU")},
    **{op: [("r", "a", lambda v, a, d: up(v.len, a), None)]
       for op in ("VSUM", "VMAX", "ARGMAX")},
    "VDOT": [("r", "a", lambda v, a, d: up(v.len, a), None),
             ("r", "b", lambda v, a, d: up(v.len, a), None)],
    "VSET": [("w", "dst", lambda v, a, d: 1, None)],
    "VGET": [("r", "src", lambda v, a, d: 1, None)],
    "ALLGATHER": [(role, "base", lambda v, a, d: (v.count - 1) * v.stride + d * v.slice, None)
                  for role in ("r", "w")],
}


def decoded_layout() -> data.StructLayout:
    """What the decode stage keeps of an instruction word: the opcode and, per operand name,
    its immediate and (indexed operands) its index register, before registers are read."""
    members = {"op": OPCODE_BITS}
    for name, (cls, bits) in FIELDS.items():
        if cls == "indexed":
            members[name] = 32
            members[f"{name}_r"] = REG_BITS
        else:
            members[name] = bits
    return data.StructLayout(members)


def uop_layout(pc_bits: int, sb_bits: int) -> data.StructLayout:
    """A resolved instruction as the engines receive it."""
    members = {"op": OPCODE_BITS, "pc": pc_bits, "sb": sb_bits}
    for name, (_cls, bits) in FIELDS.items():
        members[name] = bits
    for name in _READ_REGS:
        members[f"{name}_v"] = 32
    return data.StructLayout(members)


def decode_fields(m: Module, word: Value, out) -> None:
    """Drive `out` (a `decoded_layout` view) from a 256-bit instruction word: each operand's
    bits are taken at the position `field_layout` gives for the word's opcode."""
    word = Value.cast(word)
    code = word[:OPCODE_BITS]
    m.d.comb += out.op.eq(code)
    for name, (cls, _bits) in FIELDS.items():
        imm_sig = getattr(out, name)
        reg_sig = getattr(out, f"{name}_r") if cls == "indexed" else None
        imm_val: Value = Const(0, len(imm_sig))
        reg_val: Value = Const(0, REG_BITS)
        for op in OPCODES:
            for fname, kind_name, lsb, width in field_layout(op):
                if fname != name:
                    continue
                kind = KINDS[kind_name]
                raw = word[lsb:lsb + kind.imm_bits]
                if kind.signed:
                    raw = raw.as_signed()
                is_op = code == CODES[op]
                imm_val = Mux(is_op, raw, imm_val)
                if kind.has_reg:
                    reg_val = Mux(is_op, word[lsb + kind.imm_bits:lsb + width], reg_val)
        m.d.comb += imm_sig.eq(imm_val)
        if reg_sig is not None:
            m.d.comb += reg_sig.eq(reg_val)
