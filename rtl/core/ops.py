"""What the core needs to know about each opcode, read off the one table in `hw.isa` rather
than typed again: the micro-op layout and the instruction decoder (from `OPCODES` and
`field_layout`), the engine each opcode runs on, the registers it reads and writes, the
vector-buffer ranges the scoreboard tracks (`VRANGES`) and the HBM matrix reads that wait for
outstanding stores (`MATRIX_READS`), all from the opcode's `OpSpec`; and the widths engines
give their counters and descriptors (`LEN_BITS`, `immediate_layout`), from `KINDS`.

A micro-op (`uop_layout`) carries one member per operand name of the instruction set: indexed
operands (vaddr, haddr, count) resolved to 32 bits (immediate plus index register), register
operands as their number plus, for the ones read, the register's value (`<name>_v`), the
other immediates as their raw bits.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Value
from amaranth.lib import data

from hw.isa import KINDS, OPCODE_BITS, OPCODES, REG_BITS, Range, field_layout

__all__ = [
    "CODES",
    "ENGINES",
    "FIELDS",
    "INDEXED",
    "LEN_BITS",
    "MATRIX_READS",
    "REG_READS",
    "REG_WRITES",
    "SREG_READS",
    "SREG_WRITES",
    "VRANGES",
    "decode_fields",
    "decoded_layout",
    "flag_bit",
    "immediate_layout",
    "range_enabled",
    "range_length",
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


#: opcode -> engine (ctrl, dma, mpu, pref, vpu, scalar, ring)
ENGINES: dict[str, str] = {op: spec.engine for op, spec in OPCODES.items()}
#: opcode -> the operands naming the integer / scalar registers it reads and writes
REG_READS = {op: spec.registers("reg", "r") for op, spec in OPCODES.items()}
REG_WRITES = {op: spec.registers("reg", "w") for op, spec in OPCODES.items()}
SREG_READS = {op: spec.registers("sreg", "r") for op, spec in OPCODES.items()}
SREG_WRITES = {op: spec.registers("sreg", "w") for op, spec in OPCODES.items()}
_READ_REGS = sorted({n for names in REG_READS.values() for n in names}
                    | {n for names in SREG_READS.values() for n in names})

#: Vector-buffer ranges per opcode that has any, reads first: (role "r" | "w", range). The
#: scoreboard rounds them out to whole blocks; the k-th read takes read slot k.
VRANGES: dict[str, list[tuple[str, Range]]] = {
    op: [("r", r) for r in spec.vreads] + [("w", r) for r in spec.vwrites]
    for op, spec in OPCODES.items() if spec.vreads or spec.vwrites
}
#: HBM matrix reads per opcode (the KV cache): they wait until no store is outstanding
MATRIX_READS: dict[str, list[Range]] = {
    op: [r for r in spec.hreads if r.space == "matrix"]
    for op, spec in OPCODES.items() if any(r.space == "matrix" for r in spec.hreads)
}

#: Bits of a length or index (`count`) immediate: what the engines' length counters hold.
LEN_BITS = KINDS["count"].imm_bits


def immediate_layout(op: str) -> data.StructLayout:
    """`op`'s operands at the widths of their immediates (a descriptor an engine queues)."""
    return data.StructLayout({name: KINDS[kind].imm_bits for name, kind in OPCODES[op].fields})


def flag_bit(op: str, flag: str) -> int:
    return OPCODES[op].flags.index(flag)


def up(x, align: int):
    """x rounded up to a multiple of `align` (ints and Amaranth values alike)."""
    return (x + (align - 1)) & ~(align - 1)


class _ViewOperands:
    """The operands of a micro-op view, by name, as `Range.size` reads them."""

    def __init__(self, uop) -> None:
        self._uop = uop

    def __getitem__(self, name: str):
        return getattr(self._uop, name)


def range_length(rng: Range, uop, align: int, devices):
    """The length of `rng` for the micro-op `uop` (an Amaranth view), as a hardware value."""
    return rng.size(_ViewOperands(uop), lambda x: up(x, align), devices)


def range_enabled(op: str, rng: Range, flags):
    """Whether `rng` of `op` exists, given the decoded `flags` field (1 when unconditional)."""
    if rng.flag is None:
        return 1
    bit = flags[flag_bit(op, rng.flag)]
    return ~bit if rng.negated else bit


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
