"""The Tandem instruction set: the single source of truth for opcodes, fields and encodings.

Every instruction is one 256-bit word: the opcode in bits [7:0], then the operand fields of
that opcode packed upward from bit 8 in the order `OPCODES` lists them. The RTL decoder is
generated from `OPCODES` and `field_layout()`, the compiler emits `Instr` objects, and the
assembler/disassembler round-trip the text form; no offset or width is written anywhere else.

Operand kinds (`KINDS`):
- `reg`    an integer register r0..r15 (r0 reads as 0, writes are dropped);
- `sreg`   an FP32 scalar register s0..s15;
- `vaddr`  a vector-buffer element address: 22-bit immediate + register (`0x400+r3`);
- `haddr`  an HBM byte offset: 32-bit immediate + register. For matrix and vector operands it
           is the offset inside every pseudo-channel (data is striped, see `hw.layout`); for
           LDR/TOKOUT it is a byte offset in channel 0's scalar area;
- `count`  a length or index: 20-bit immediate + register (`64`, `r5`, `1+r5`);
- `u16`, `u22`: unsigned immediates; `i32`: signed immediate; `f32`, `f16`: float immediates
           (held as `FloatImm`, which keeps the exact bit pattern, NaN payload and sign
           included; the text form writes a NaN as its bits, `bits:0x7fc00001`);
- `target` an instruction index (a label in assembly text);
- `flags`  named bits (`flags=bias|prefetched`).

Register-based (dynamic) addresses exist so one compiled program serves every prompt, layer
and position, and so MoE expert weights can be selected at run time.

Besides its fields, each opcode's entry states its meaning, which every layer reads instead of
restating it: the engine that executes it (`ENGINES`), the timing model's cost family
(`COSTS`), the registers it reads and writes, and the vector-buffer and HBM ranges it reads
and writes (`Range`, as expressions over its resolved operands). The timing model's costs and
scoreboard footprints, the RTL's engine routing, hazards and range checks, and the
instruction-level simulator's dispatch are derived from it; adding an opcode touches this table
and one execution function per layer.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "COSTS",
    "ENGINES",
    "KINDS",
    "NUM_REGS",
    "OPCODES",
    "SPACES",
    "WORD_BITS",
    "FloatImm",
    "Instr",
    "IsaError",
    "OpSpec",
    "Operand",
    "Range",
    "assemble",
    "decode",
    "decode_program",
    "disassemble",
    "encode",
    "encode_program",
    "field_layout",
    "resolve",
]

WORD_BITS = 256
OPCODE_BITS = 8
NUM_REGS = 16
REG_BITS = 4


class IsaError(ValueError):
    """A malformed instruction, program word or assembly line."""


@dataclass(frozen=True)
class Kind:
    imm_bits: int  # width of the immediate part (0 for register-only kinds)
    has_reg: bool  # an index register follows the immediate
    signed: bool = False
    fmt: str = "int"  # int | reg | sreg | f32 | f16 | target | flags


KINDS: dict[str, Kind] = {
    "reg": Kind(REG_BITS, False, fmt="reg"),
    "sreg": Kind(REG_BITS, False, fmt="sreg"),
    "vaddr": Kind(22, True),
    "haddr": Kind(32, True),
    "count": Kind(20, True),
    "u16": Kind(16, False),
    "u22": Kind(22, False),
    "i32": Kind(32, False, signed=True),
    "f32": Kind(32, False, fmt="f32"),
    "f16": Kind(16, False, fmt="f16"),
    "target": Kind(16, False, fmt="target"),
    "flags": Kind(4, False, fmt="flags"),
}


#: The engines of a core, in the order the timing model and the RTL list them. Every opcode
#: runs on exactly one; engines work in parallel, the controller issues to them in order.
ENGINES: dict[str, str] = {
    "ctrl": "controller: integer registers and branches, executed at issue",
    "dma": "DMA engine: HBM <-> vector buffer, scalar loads, token output",
    "mpu": "matrix processing unit: the dot-product lanes",
    "pref": "weight prefetcher: streams matrices into the lanes' FIFOs ahead of their MM",
    "vpu": "vector processing unit: elementwise, reduction and special-function pipelines",
    "scalar": "FP32 scalar unit",
    "ring": "ring router: collectives across the devices",
}

#: Cost families: the opcodes of a family are timed by one formula of `hw.perf` (which
#: documents them); an opcode names its family in the table.
COSTS: dict[str, str] = {
    "ctrl": "one issue cycle, result at once",
    "dma-word": "one 32-bit word to or from channel 0, done when the memory answers",
    "dma-stream": "a striped vector over every port",
    "dma-row": "one matrix row through one port",
    "dma-column": "one matrix column, a write per element",
    "mm": "weight rows streamed through the dot-product lanes",
    "prefetch": "a descriptor queued for the prefetcher",
    "elementwise": "one vector beat per cycle through the VPU pipeline",
    "sfu": "one special-function beat per cycle",
    "sum": "one row on a dot lane (its adder loop per beat), then the reduction",
    "reduction": "a compare tree, one beat per cycle",
    "vpu-single": "one vector-buffer word",
    "scalar": "one FP32 scalar operation",
    "allgather": "ring steps moving every device's slices",
    "ring-word": "ring steps moving one register pair",
    "barrier": "ring steps moving no data",
}

#: Where a range lies: the vector buffer, or one of the HBM spaces (see `Range`).
SPACES: dict[str, str] = {
    "vbuf": "vector-buffer words",
    "matrix": "a matrix in HBM addressed by rows and columns (the KV cache, weights read "
              "directly by an MM); the scoreboard orders reads after writes of the same matrix",
    "weights": "a read-only weight matrix streamed by the prefetcher; never written while a "
               "program runs, so not ordered against stores",
    "vector": "a striped vector in HBM, ordered by the program",
    "scalar": "32-bit words of channel 0's scalar area (job words, tokens), ordered by the "
              "program",
}

#: Names a range length may use besides the opcode's operands: `up(x)` rounds x up to a whole
#: vector-buffer block (`align` words), `devices` is the number of devices in the ring.
_LENGTH_NAMES = frozenset({"up", "devices"})
_RANGE_RE = re.compile(r"^(?:(?P<space>[a-z]+) )?(?P<start>\w+)\[(?P<length>[^\]]+)\]"
                       r"(?: (?P<cond>if|unless) (?P<flag>\w+))?$")


_LENGTH_NODES = (ast.Expression, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Name, ast.Load,
                 ast.Constant, ast.Call)


def _check_length(expr: str, where: str) -> None:
    """A length may use only integers, names, `+ - *` and calls of `up`: what evaluates the
    same over Python ints and Amaranth values."""
    for node in ast.walk(ast.parse(expr, mode="eval")):
        assert isinstance(node, _LENGTH_NODES), f"{where}: {type(node).__name__} in a length"
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name), where
            assert node.func.id == "up", where
            assert len(node.args) == 1, where
            assert not node.keywords, where
        if isinstance(node, ast.Constant):
            assert type(node.value) is int, where


@dataclass(frozen=True)
class Range:
    """A range an instruction reads or writes, written `[space ]start[length][ if|unless flag]`.

    `start` is the operand holding its first element (a vector-buffer word, or an HBM byte
    offset naming the matrix, vector or scalar word). `length` counts elements (FP16 values;
    32-bit words in the scalar space) as an expression over the resolved operands, `up` and
    `devices`, using only `+`, `-`, `*` and `up`, so that the same text evaluates over Python
    ints (timing model, simulator) and over Amaranth values (the RTL scoreboard). A range with
    a flag exists only while that flag of the opcode is set (`if`) or clear (`unless`).
    """

    space: str  # one of SPACES
    start: str
    length: str  # the expression, as written in the table
    names: tuple[str, ...] = field(compare=False)  # the operands `length` reads
    #: `length` compiled once: function(up, devices, *operand values in `names` order)
    _length: Callable[..., Any] = field(compare=False, repr=False)
    flag: str | None = None
    negated: bool = False  # `unless flag`

    @classmethod
    def parse(cls, text: str, space: str = "vbuf") -> Range:
        m = _RANGE_RE.match(text)
        if m is None:
            raise AssertionError(f"malformed range {text!r}")
        _check_length(m["length"], text)
        names = tuple(n for n in compile(m["length"], text, "eval").co_names
                      if n not in _LENGTH_NAMES)
        # the table's own text, evaluated with nothing but its operands, `up` and `devices`
        length = eval(f"lambda up, devices, {', '.join(names)}: {m['length']}",
                      {"__builtins__": {}})
        return cls(m["space"] or space, m["start"], m["length"], names, length, m["flag"],
                   m["cond"] == "unless")

    def size(self, operands, up, devices):
        """The length, with `operands[name]` the value of each operand it reads and `up`
        the rounding function (ints or hardware values alike)."""
        return self._length(up, devices, *[operands[name] for name in self.names])

    def enabled(self, flags: frozenset) -> bool:
        """Whether the range exists for an instruction with these flags set."""
        return self.flag is None or (self.flag in flags) != self.negated

    def __str__(self) -> str:
        space = "" if self.space == "vbuf" else f"{self.space} "
        cond = f" {'unless' if self.negated else 'if'} {self.flag}" if self.flag else ""
        return f"{space}{self.start}[{self.length}]{cond}"


@dataclass(frozen=True)
class OpSpec:
    """One opcode: its encoding and its meaning, the one description every layer reads."""

    code: int
    name: str
    fields: tuple[tuple[str, str], ...]  # (operand name, kind)
    engine: str  # one of ENGINES: the engine that executes it
    cost: str  # one of COSTS: the timing model's formula for it
    flags: tuple[str, ...] = ()  # names of the bits of the `flags` field, bit 0 first
    doc: str = ""
    reads: tuple[str, ...] = ()  # register operands (reg or sreg) whose registers it reads
    writes: tuple[str, ...] = ()  # register operands whose registers it writes
    vreads: tuple[Range, ...] = ()  # vector-buffer ranges it reads
    vwrites: tuple[Range, ...] = ()  # vector-buffer ranges it writes
    hreads: tuple[Range, ...] = ()  # HBM ranges it reads
    hwrites: tuple[Range, ...] = ()  # HBM ranges it writes

    def registers(self, kind: str, role: str) -> tuple[str, ...]:
        """The operands of `kind` ("reg" or "sreg") whose registers it reads or writes."""
        kinds = dict(self.fields)
        return tuple(n for n in (self.reads if role == "r" else self.writes) if kinds[n] == kind)


def _op(code, name, engine, cost, doc, *fields, flags=(), reads="", writes="", vreads=(),
        vwrites=(), hreads=(), hwrites=()):
    return OpSpec(code, name, tuple(tuple(f.split(":")) for f in fields), engine, cost, flags,
                  doc, tuple(reads.split()), tuple(writes.split()),
                  tuple(Range.parse(r) for r in vreads), tuple(Range.parse(r) for r in vwrites),
                  tuple(Range.parse(r, space="") for r in hreads),
                  tuple(Range.parse(r, space="") for r in hwrites))


_SPECS = [
    # -- control ---------------------------------------------------------------------------
    _op(0x00, "NOP", "ctrl", "ctrl", "do nothing"),
    _op(0x01, "HALT", "ctrl", "ctrl", "stop; raises ap_done once every unit is idle"),
    _op(0x02, "LI", "ctrl", "ctrl", "rd = imm", "rd:reg", "imm:i32", writes="rd"),
    _op(0x03, "ADDI", "ctrl", "ctrl", "rd = ra + imm", "rd:reg", "ra:reg", "imm:i32",
        reads="ra", writes="rd"),
    _op(0x04, "ADD", "ctrl", "ctrl", "rd = ra + rb", "rd:reg", "ra:reg", "rb:reg",
        reads="ra rb", writes="rd"),
    _op(0x05, "SUB", "ctrl", "ctrl", "rd = ra - rb", "rd:reg", "ra:reg", "rb:reg",
        reads="ra rb", writes="rd"),
    _op(0x06, "MUL", "ctrl", "ctrl", "rd = ra * rb (low 32 bits)", "rd:reg", "ra:reg", "rb:reg",
        reads="ra rb", writes="rd"),
    _op(0x07, "MULI", "ctrl", "ctrl", "rd = ra * imm (low 32 bits)", "rd:reg", "ra:reg",
        "imm:i32", reads="ra", writes="rd"),
    _op(0x08, "MIN", "ctrl", "ctrl", "rd = min(ra, rb), signed", "rd:reg", "ra:reg", "rb:reg",
        reads="ra rb", writes="rd"),
    _op(0x09, "BLT", "ctrl", "ctrl", "if ra < rb (signed) goto target", "ra:reg", "rb:reg",
        "target:target", reads="ra rb"),
    _op(0x0A, "BGE", "ctrl", "ctrl", "if ra >= rb (signed) goto target", "ra:reg", "rb:reg",
        "target:target", reads="ra rb"),
    _op(0x0B, "BEQ", "ctrl", "ctrl", "if ra == rb goto target", "ra:reg", "rb:reg",
        "target:target", reads="ra rb"),
    _op(0x0C, "BNE", "ctrl", "ctrl", "if ra != rb goto target", "ra:reg", "rb:reg",
        "target:target", reads="ra rb"),
    _op(0x0D, "JMP", "ctrl", "ctrl", "goto target", "target:target"),
    _op(0x0E, "LDR", "dma", "dma-word", "rd = 32-bit word at channel-0 scalar-area byte addr",
        "rd:reg", "addr:haddr", writes="rd", hreads=["scalar addr[1]"]),
    _op(0x0F, "TOKOUT", "dma", "dma-word", "write ra as a 32-bit token to channel-0 byte addr",
        "ra:reg", "addr:haddr", reads="ra", hwrites=["scalar addr[1]"]),
    # -- DMA between HBM and the vector buffer --------------------------------------------
    _op(0x10, "LOADV", "dma", "dma-stream", "vbuf[dst:dst+len] = striped vector at src",
        "dst:vaddr", "src:haddr", "len:count",
        vwrites=["dst[up(len)]"], hreads=["vector src[up(len)]"]),
    _op(0x11, "STOREV", "dma", "dma-stream", "striped vector at dst = vbuf[src:src+len]",
        "dst:haddr", "src:vaddr", "len:count",
        vreads=["src[up(len)]"], hwrites=["vector dst[up(len)]"]),
    _op(0x12, "LOADR", "dma", "dma-row", "vbuf[dst:dst+len] = row `row` of the matrix at mat",
        "dst:vaddr", "mat:haddr", "ldb:u16", "row:count", "len:count",
        vwrites=["dst[up(len)]"], hreads=["matrix mat[up(len)]"]),
    _op(0x13, "STORER", "dma", "dma-row", "row `row` of the matrix at mat = vbuf[src:src+len]",
        "mat:haddr", "ldb:u16", "row:count", "src:vaddr", "len:count",
        vreads=["src[up(len)]"], hwrites=["matrix mat[up(len)]"]),
    _op(0x14, "STOREC", "dma", "dma-column",
        "column `col` of the matrix at mat, rows 0..len-1 = vbuf[src..]",
        "mat:haddr", "ldb:u16", "col:count", "src:vaddr", "len:count",
        vreads=["src[up(len)]"], hwrites=["matrix mat[up(len)]"]),
    # -- matrix processing unit ----------------------------------------------------------
    _op(0x20, "MM", "mpu", "mm",
        "for t < ntok, r < rows: dst[t*dstride + r] = round(dot(W[r, :cols], src[t*sstride:]) "
        "(+ bias[r])); with mask, rows..align-1 of each output are -Inf",
        "dst:vaddr", "src:vaddr", "w:haddr", "ldb:u16", "rows:count", "cols:count",
        "ntok:count", "dstride:u22", "sstride:u22", "bias:u22", "flags:flags",
        flags=("bias", "mask", "prefetched"),
        vreads=["src[(ntok - 1) * sstride + up(cols)]", "bias[up(rows)] if bias"],
        vwrites=["dst[(ntok - 1) * dstride + up(rows)]"],
        hreads=["matrix w[rows * cols] unless prefetched"]),
    _op(0x21, "PREFETCH", "pref", "prefetch", "stream a weight matrix into the lanes' FIFOs for "
        "the next MM with flags=prefetched", "w:haddr", "ldb:u16", "rows:count", "cols:count",
        hreads=["weights w[rows * cols]"]),
    # -- vector processing unit and special functions ------------------------------------
    _op(0x30, "VADD", "vpu", "elementwise", "dst = vadd(a, b)", "dst:vaddr", "a:vaddr", "b:vaddr",
        "len:count", vreads=["a[up(len)]", "b[up(len)]"], vwrites=["dst[up(len)]"]),
    _op(0x31, "VMUL", "vpu", "elementwise", "dst = vmul(a, b)", "dst:vaddr", "a:vaddr", "b:vaddr",
        "len:count", vreads=["a[up(len)]", "b[up(len)]"], vwrites=["dst[up(len)]"]),
    _op(0x32, "VFMA", "vpu", "elementwise", "dst = vfma(a, b, c)", "dst:vaddr", "a:vaddr",
        "b:vaddr", "c:vaddr", "len:count",
        vreads=["a[up(len)]", "b[up(len)]", "c[up(len)]"], vwrites=["dst[up(len)]"]),
    _op(0x33, "VADDS", "vpu", "elementwise", "dst = vadd(a, +-s) with s the FP32 scalar",
        "dst:vaddr", "a:vaddr", "s:sreg", "len:count", "flags:flags", flags=("neg",),
        reads="s", vreads=["a[up(len)]"], vwrites=["dst[up(len)]"]),
    _op(0x34, "VMULS", "vpu", "elementwise", "dst = vmul(a, round_fp16(s))",
        "dst:vaddr", "a:vaddr", "s:sreg", "len:count",
        reads="s", vreads=["a[up(len)]"], vwrites=["dst[up(len)]"]),
    _op(0x35, "VEXP", "vpu", "sfu", "dst = exp(a)", "dst:vaddr", "a:vaddr", "len:count",
        vreads=["a[up(len)]"], vwrites=["dst[up(len)]"]),
    _op(0x36, "VGELU", "vpu", "sfu", "dst = gelu(a)", "dst:vaddr", "a:vaddr", "len:count",
        vreads=["a[up(len)]"], vwrites=["dst[up(len)]"]),
    _op(0x37, "VSUM", "vpu", "sum", "sd = reduce_sum(a) (FP32)", "sd:sreg", "a:vaddr",
        "len:count", writes="sd", vreads=["a[up(len)]"]),
    _op(0x38, "VMAX", "vpu", "reduction", "sd = widen(reduce_max(a))", "sd:sreg", "a:vaddr",
        "len:count", writes="sd", vreads=["a[up(len)]"]),
    _op(0x39, "VDOT", "vpu", "sum", "sd = dot(a, b) (FP32)", "sd:sreg", "a:vaddr", "b:vaddr",
        "len:count", writes="sd", vreads=["a[up(len)]", "b[up(len)]"]),
    _op(0x3A, "ARGMAX", "vpu", "reduction", "rd = base + first index of max(a); sd = widen(max)",
        "rd:reg", "sd:sreg", "a:vaddr", "len:count", "base:count",
        writes="rd sd", vreads=["a[up(len)]"]),
    _op(0x3B, "VSET", "vpu", "vpu-single", "vbuf[dst] = round_fp16(s)", "dst:vaddr", "s:sreg",
        reads="s", vwrites=["dst[1]"]),
    _op(0x3C, "VGET", "vpu", "vpu-single", "sd = widen(vbuf[src])", "sd:sreg", "src:vaddr",
        writes="sd", vreads=["src[1]"]),
    # -- FP32 scalar unit ------------------------------------------------------------------
    _op(0x40, "SLI", "scalar", "scalar", "sd = imm", "sd:sreg", "imm:f32", writes="sd"),
    _op(0x41, "SMULI", "scalar", "scalar", "sd = mul32(sa, imm)", "sd:sreg", "sa:sreg",
        "imm:f32", reads="sa", writes="sd"),
    _op(0x42, "SADDH", "scalar", "scalar", "sd = widen(round_fp16(add(sa, widen(imm))))",
        "sd:sreg", "sa:sreg", "imm:f16", reads="sa", writes="sd"),
    _op(0x43, "SRECIP", "scalar", "scalar", "sd = widen(reciprocal(round_fp16(sa)))",
        "sd:sreg", "sa:sreg", reads="sa", writes="sd"),
    _op(0x44, "SRSQRT", "scalar", "scalar", "sd = widen(rsqrt(round_fp16(sa)))", "sd:sreg",
        "sa:sreg", reads="sa", writes="sd"),
    # -- ring ------------------------------------------------------------------------------
    _op(0x50, "ALLGATHER", "ring", "allgather",
        "for t < count: device d's slice vbuf[base + t*stride + d*slice : +slice] reaches "
        "every device", "base:vaddr", "slice:u22", "stride:u22", "count:count",
        vreads=["base[(count - 1) * stride + devices * slice]"],
        vwrites=["base[(count - 1) * stride + devices * slice]"]),
    _op(0x51, "ARGMAXALL", "ring", "ring-word",
        "(sd, rd) = the largest (sd, -rd) over all devices", "rd:reg", "sd:sreg",
        reads="rd sd", writes="rd sd"),
    _op(0x52, "SYNC", "ring", "barrier", "barrier across the ring"),
]

OPCODES: dict[str, OpSpec] = {s.name: s for s in _SPECS}
_BY_CODE: dict[int, OpSpec] = {s.code: s for s in _SPECS}


_FLOAT_DTYPES = {"f32": (np.float32, np.uint32, 32), "f16": (np.float16, np.uint16, 16)}


class FloatImm(float):
    """A float immediate that remembers the exact bits of its `fmt` ("f32" or "f16").

    It is the float the word holds (arithmetic and comparisons with plain floats work as on
    that float), plus `bits`, so that a NaN keeps its payload and sign (converting a
    signalling NaN to a Python float would quieten it). Two FloatImm are equal when their
    bits are: NaN equals the same NaN, and 0.0 differs from -0.0.
    """

    __slots__ = ("bits", "fmt")
    bits: int
    fmt: str

    def __new__(cls, bits: int, fmt: str) -> FloatImm:
        ftype, utype, width = _FLOAT_DTYPES[fmt]
        if not isinstance(bits, int | np.integer) or not 0 <= bits < 1 << width:
            raise IsaError(f"{fmt} bits must be an integer in 0..0x{(1 << width) - 1:x}, "
                           f"not {bits!r}")
        obj = super().__new__(cls, float(np.array(bits, utype).view(ftype)))
        obj.bits = int(bits)
        obj.fmt = fmt
        return obj

    @classmethod
    def of(cls, value: object, fmt: str) -> FloatImm:
        """`value` rounded to `fmt` (a FloatImm of the same format is kept bit for bit)."""
        if isinstance(value, FloatImm) and value.fmt == fmt:
            return value
        ftype, utype, _ = _FLOAT_DTYPES[fmt]
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer
                                                     | np.floating):
            raise IsaError(f"a {fmt} immediate must be a number, not {value!r}")
        try:
            with np.errstate(over="ignore"):  # out of range rounds to +-inf
                return cls(int(np.array(value, ftype).view(utype)), fmt)
        except OverflowError:  # an int beyond float64
            return cls.of(math.inf if value > 0 else -math.inf, fmt)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FloatImm):
            return self.fmt == other.fmt and self.bits == other.bits
        return float.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.fmt, self.bits)) if math.isnan(self) else float.__hash__(self)

    def __reduce__(self):
        return FloatImm, (self.bits, self.fmt)

    def text(self) -> str:
        """The assembly form: the shortest decimal that reads back to these bits, or for a
        NaN its bits in hex (payload and sign kept)."""
        if math.isnan(self):
            return f"bits:0x{self.bits:0{_FLOAT_DTYPES[self.fmt][2] // 4}x}"
        return repr(float(self))


@dataclass(frozen=True)
class Operand:
    """An immediate plus an optional index register (reg 0 means none)."""

    imm: int | float = 0
    reg: int = 0

    def __str__(self) -> str:
        return _format_indexed(self)


def _field_bits(kind: Kind) -> int:
    return kind.imm_bits + (REG_BITS if kind.has_reg else 0)


def field_layout(op: str) -> list[tuple[str, str, int, int]]:
    """(operand, kind, lsb, width) of each field of `op`'s word, width counting the register."""
    spec = OPCODES[op]
    out, lsb = [], OPCODE_BITS
    for name, kind in spec.fields:
        width = _field_bits(KINDS[kind])
        out.append((name, kind, lsb, width))
        lsb += width
    return out


def _check_spec(spec: OpSpec) -> None:
    """The table must fit the word and name only what exists; checked once at import."""
    used = OPCODE_BITS + sum(_field_bits(KINDS[k]) for _, k in spec.fields)
    assert used <= WORD_BITS, (spec.name, used)
    assert len(spec.flags) <= KINDS["flags"].imm_bits, spec.name
    assert spec.engine in ENGINES, spec.name
    assert spec.cost in COSTS, spec.name
    kinds = dict(spec.fields)
    for name in spec.reads + spec.writes:
        assert kinds.get(name) in ("reg", "sreg"), (spec.name, name)
    for ranges, hbm in ((spec.vreads, False), (spec.vwrites, False), (spec.hreads, True),
                        (spec.hwrites, True)):
        for r in ranges:
            where = (spec.name, str(r))
            assert r.space in SPACES, where
            assert (r.space != "vbuf") == hbm, where
            assert r.start in kinds, where
            assert all(n in kinds for n in r.names), where
            assert r.flag is None or r.flag in spec.flags, where


for _spec in _SPECS:
    _check_spec(_spec)


@dataclass
class Instr:
    """One instruction: opcode name plus operand values (Operand for indexed kinds, int or
    float otherwise, a label string or index for targets, a set of names for flags)."""

    op: str
    #: operand name -> value. The value's type follows the operand's kind (`KINDS`), which
    #: varies per key, so it is typed Any; `__post_init__` normalises it: an Operand for
    #: indexed kinds, a FloatImm for f32/f16, a frozenset of names for flags, a label str or
    #: index for targets, an int otherwise.
    args: dict[str, Any] = field(default_factory=dict)
    comment: str = ""

    def __post_init__(self) -> None:
        spec = OPCODES.get(self.op)
        if spec is None:
            raise IsaError(f"unknown opcode {self.op!r}")
        names = [n for n, _ in spec.fields]
        unknown = sorted(set(self.args) - set(names))
        if unknown:
            raise IsaError(f"{self.op} has no operand {unknown[0]!r}; operands: {names}")
        for name, kind in spec.fields:
            k = KINDS[kind]
            value = self.args.get(name)
            if k.has_reg:
                if value is None:
                    value = Operand()
                elif isinstance(value, int):
                    value = Operand(value)
                elif not isinstance(value, Operand):
                    raise IsaError(f"{self.op}.{name} must be an int or Operand, not {value!r}")
            elif k.fmt == "flags":
                value = frozenset(value or ())
                bad = sorted(value - set(spec.flags))
                if bad:
                    raise IsaError(f"{self.op} has no flag {bad[0]!r}; flags: {spec.flags}")
            elif k.fmt in ("f32", "f16"):  # store the value the word will hold, bit for bit
                value = FloatImm.of(0.0 if value is None else value, k.fmt)
            elif value is None:
                value = 0
            self.args[name] = value

    def __getitem__(self, name: str):
        return self.args[name]

    def __eq__(self, other) -> bool:
        return isinstance(other, Instr) and self.op == other.op and self.args == other.args

    def __str__(self) -> str:
        return format_instr(self)


# -- encoding --------------------------------------------------------------------------------


def _check_range(op: str, name: str, value: int, bits: int, signed: bool) -> int:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not isinstance(value, int | np.integer) or not lo <= value <= hi:
        raise IsaError(f"{op}.{name} = {value!r} does not fit {bits} "
                       f"{'signed' if signed else 'unsigned'} bits ({lo}..{hi})")
    return int(value) & ((1 << bits) - 1)


def _encode_field(instr: Instr, name: str, kind_name: str) -> int:
    kind = KINDS[kind_name]
    value = instr.args[name]
    op = instr.op
    if kind.has_reg:
        imm = _check_range(op, name, value.imm, kind.imm_bits, False)
        reg = _check_range(op, f"{name}.reg", value.reg, REG_BITS, False)
        return imm | (reg << kind.imm_bits)
    if kind.fmt in ("reg", "sreg"):
        return _check_range(op, name, value, REG_BITS, False)
    if kind.fmt in ("f32", "f16"):
        return FloatImm.of(value, kind.fmt).bits
    if kind.fmt == "flags":
        spec = OPCODES[op]
        return sum(1 << spec.flags.index(f) for f in value)
    if kind.fmt == "target" and not isinstance(value, int | np.integer):
        raise IsaError(f"{op}.{name} is an unresolved label {value!r}")
    return _check_range(op, name, value, kind.imm_bits, kind.signed)


def encode(instr: Instr) -> int:
    """The instruction as a 256-bit integer."""
    word = OPCODES[instr.op].code
    for name, kind, lsb, _ in field_layout(instr.op):
        word |= _encode_field(instr, name, kind) << lsb
    return word


def decode(word: int, where: str = "word") -> Instr:
    """The instruction a 256-bit word holds; IsaError for anything that is not one.

    Every word that decodes encodes back to itself: `encode(decode(w)) == w`."""
    if isinstance(word, bool) or not isinstance(word, int | np.integer):
        raise IsaError(f"{where} must be an integer, not {type(word).__name__}")
    word = int(word)
    if not 0 <= word < 1 << WORD_BITS:
        raise IsaError(f"{where} does not fit {WORD_BITS} bits")
    code = word & ((1 << OPCODE_BITS) - 1)
    spec = _BY_CODE.get(code)
    if spec is None:
        raise IsaError(f"unknown opcode 0x{code:02X} in {where}")
    args: dict[str, object] = {}
    used = OPCODE_BITS
    for name, kind_name, lsb, width in field_layout(spec.name):
        kind = KINDS[kind_name]
        raw = (word >> lsb) & ((1 << width) - 1)
        imm = raw & ((1 << kind.imm_bits) - 1)
        if kind.has_reg:
            args[name] = Operand(imm, raw >> kind.imm_bits)
        elif kind.fmt in ("f32", "f16"):
            args[name] = FloatImm(imm, kind.fmt)
        elif kind.fmt == "flags":
            if imm >> len(spec.flags):
                raise IsaError(f"{where}: {spec.name} sets undefined flag bits 0x{imm:x}")
            args[name] = frozenset(f for i, f in enumerate(spec.flags) if imm >> i & 1)
        elif kind.signed and imm >> (kind.imm_bits - 1):
            args[name] = imm - (1 << kind.imm_bits)
        else:
            args[name] = imm
        used = lsb + width
    if word >> used:
        raise IsaError(f"{where}: {spec.name} has bits set above its last field (bit {used})")
    return Instr(spec.name, args)


def encode_program(program: Sequence[Instr]) -> np.ndarray:
    """Instructions -> (N, 4) uint64 little-endian words (word 0 holds bits 63..0)."""
    out = np.zeros((len(program), WORD_BITS // 64), dtype=np.uint64)
    for i, instr in enumerate(program):
        word = encode(instr)
        for j in range(WORD_BITS // 64):
            out[i, j] = (word >> (64 * j)) & 0xFFFF_FFFF_FFFF_FFFF
    return out


def decode_program(words: np.ndarray) -> list[Instr]:
    """(N, 4) uint64 words (or N*4 flat) -> instructions; IsaError for anything else."""
    per_word = WORD_BITS // 64
    try:
        array = np.asarray(words)
    except (TypeError, ValueError) as e:
        raise IsaError(f"program words must be an (N, {per_word}) integer array: {e}") from None
    if array.dtype.kind not in "ui":
        raise IsaError(f"program words must be unsigned 64-bit integers, not {array.dtype}")
    if array.size and (array.min() < 0 or int(array.max()) >= 1 << 64):
        raise IsaError("program words must be unsigned 64-bit integers, not negative ones")
    if not ((array.ndim == 2 and array.shape[1] == per_word)
            or (array.ndim == 1 and array.size % per_word == 0)):
        raise IsaError(f"program words must have shape (N, {per_word}) or (N*{per_word},), "
                       f"not {array.shape}")
    words = array.astype(np.uint64).reshape(-1, per_word)
    out = []
    for i, row in enumerate(words):
        word = sum(int(v) << (64 * j) for j, v in enumerate(row))
        out.append(decode(word, where=f"instruction {i}"))
    return out


# -- text form -------------------------------------------------------------------------------

_REG_RE = re.compile(r"^r(\d+)$")
_SREG_RE = re.compile(r"^s(\d+)$")
_INDEXED_RE = re.compile(r"^(?:(-?(?:0x[0-9a-fA-F]+|\d+))?)(?:\+?r(\d+))?$")
_LABEL_RE = re.compile(r"^([A-Za-z_.][\w.]*):$")


def _format_indexed(value: Operand) -> str:
    imm = f"0x{value.imm:x}" if value.imm >= 4096 else str(value.imm)
    if value.reg == 0:
        return imm
    return f"r{value.reg}" if value.imm == 0 else f"{imm}+r{value.reg}"


def format_instr(instr: Instr, labels: dict[int, str] | None = None) -> str:
    spec = OPCODES[instr.op]
    parts = [instr.op]
    for name, kind_name in spec.fields:
        kind = KINDS[kind_name]
        value = instr.args[name]
        if kind.has_reg:
            text = _format_indexed(value)
        elif kind.fmt == "reg":
            text = f"r{value}"
        elif kind.fmt == "sreg":
            text = f"s{value}"
        elif kind.fmt in ("f32", "f16"):
            text = FloatImm.of(value, kind.fmt).text()
        elif kind.fmt == "flags":
            if not value:
                continue
            text = "|".join(f for f in spec.flags if f in value)
        elif kind.fmt == "target":
            text = labels.get(value, f"@{value}") if labels and isinstance(value, int) \
                else (value if isinstance(value, str) else f"@{value}")
        else:
            text = str(value)
        parts.append(f"{name}={text}")
    line = " ".join(parts)
    comment = " ".join(instr.comment.split())  # one line, whatever the comment holds
    return f"{line}  # {comment}" if comment else line


def disassemble(program: Sequence[Instr]) -> str:
    """Text with a label before every branch target; `assemble` reads it back exactly.

    A target beyond the end of the program (which can only be reached by running off it) has
    no place for a label and is written as its index, `@N`."""
    targets = sorted({ins.args["target"] for ins in program if "target" in ins.args
                      and isinstance(ins.args["target"], int)
                      and ins.args["target"] <= len(program)})
    labels = {t: f"L{t}" for t in targets}
    lines = []
    for i, instr in enumerate(program):
        if i in labels:
            lines.append(f"{labels[i]}:")
        lines.append("    " + format_instr(instr, labels))
    if len(program) in labels:  # a branch may target one past the end (a fall-through exit)
        lines.append(f"{labels[len(program)]}:")
    return "\n".join(lines) + "\n"


def _parse_value(op: str, name: str, kind_name: str, text: str, where: str):
    kind = KINDS[kind_name]
    try:
        if kind.has_reg:
            m = _INDEXED_RE.match(text)
            if not m or text == "":
                raise ValueError
            imm = int(m.group(1), 0) if m.group(1) else 0
            reg = int(m.group(2)) if m.group(2) else 0
            return Operand(imm, reg)
        if kind.fmt in ("reg", "sreg"):
            m = (_REG_RE if kind.fmt == "reg" else _SREG_RE).match(text)
            if not m:
                raise ValueError
            return int(m.group(1))
        if kind.fmt in ("f32", "f16"):
            if text.startswith("bits:"):
                return FloatImm(int(text[5:], 16), kind.fmt)
            return float(text)
        if kind.fmt == "flags":
            return frozenset(f for f in text.split("|") if f)
        if kind.fmt == "target":
            if text.startswith("@"):
                if not text[1:].isdigit():
                    raise ValueError
                return int(text[1:])
            if not re.fullmatch(r"[A-Za-z_.][\w.]*", text):
                raise ValueError
            return text
        return int(text, 0)
    except (ValueError, IsaError):
        raise IsaError(f"{where}: {op}.{name} cannot be {text!r}") from None


def assemble(text: str | Iterable[str]) -> list[Instr]:
    """Parse assembly text: `OP name=value ...` per line, `label:` lines, `#` comments."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    program: list[Instr] = []
    labels: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LABEL_RE.match(line)
        if m:
            if m.group(1) in labels:
                raise IsaError(f"line {n}: label {m.group(1)!r} defined twice")
            labels[m.group(1)] = len(program)
            continue
        op, *pairs = line.split()
        spec = OPCODES.get(op.upper())
        if spec is None:
            raise IsaError(f"line {n}: unknown opcode {op!r}")
        kinds = dict(spec.fields)
        args = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or name not in kinds:
                raise IsaError(f"line {n}: {spec.name} has no operand {name!r}")
            args[name] = _parse_value(spec.name, name, kinds[name], value, f"line {n}")
        try:
            program.append(Instr(spec.name, args))
        except IsaError as e:
            raise IsaError(f"line {n}: {e}") from None
    for i, instr in enumerate(program):
        target = instr.args.get("target")
        if isinstance(target, str):
            if target not in labels:
                raise IsaError(f"instruction {i}: undefined label {target!r}")
            instr.args["target"] = labels[target]
    return program


def resolve(instr: Instr, regs: Sequence[int]) -> dict[str, Any]:
    """Operand values with every index register applied: imm + regs[reg] (r0 reads 0).
    Values are typed as in `Instr.args`, an indexed operand becoming a plain number."""
    out: dict[str, Any] = {}
    for name, kind in OPCODES[instr.op].fields:
        value = instr.args[name]
        if KINDS[kind].has_reg:
            out[name] = value.imm + (regs[value.reg] if value.reg else 0)
        else:
            out[name] = value
    return out
