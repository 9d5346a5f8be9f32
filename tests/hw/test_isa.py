"""The instruction set: encodings and text round-trip, malformed input is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.isa import (
    KINDS,
    OPCODES,
    WORD_BITS,
    Instr,
    IsaError,
    Operand,
    assemble,
    decode,
    decode_program,
    disassemble,
    encode,
    encode_program,
    field_layout,
)


def _value(kind_name: str, spec):
    kind = KINDS[kind_name]
    if kind.has_reg:
        return st.builds(Operand, st.integers(0, 2**kind.imm_bits - 1), st.integers(0, 15))
    if kind.fmt in ("reg", "sreg"):
        return st.integers(0, 15)
    if kind.fmt == "f32":
        return st.floats(width=32, allow_nan=False)
    if kind.fmt == "f16":
        return st.floats(width=16, allow_nan=False)
    if kind.fmt == "flags":
        return st.frozensets(st.sampled_from(spec.flags)) if spec.flags else st.just(frozenset())
    if kind.fmt == "target":
        return st.integers(0, 2**kind.imm_bits - 1)
    if kind.signed:
        return st.integers(-(2 ** (kind.imm_bits - 1)), 2 ** (kind.imm_bits - 1) - 1)
    return st.integers(0, 2**kind.imm_bits - 1)


@st.composite
def instructions(draw):
    spec = OPCODES[draw(st.sampled_from(sorted(OPCODES)))]
    args = {name: draw(_value(kind, spec)) for name, kind in spec.fields}
    return Instr(spec.name, args)


@settings(max_examples=600, deadline=None)
@given(instructions())
def test_encode_decode_round_trip(instr):
    word = encode(instr)
    assert 0 <= word < 1 << WORD_BITS
    assert decode(word) == instr


@settings(max_examples=60, deadline=None)
@given(st.lists(instructions(), min_size=1, max_size=20))
def test_program_round_trips_through_binary_and_text(program):
    targets = [i for i in program if "target" in i.args]
    for ins in targets:  # keep branch targets inside the program, as a program must
        ins.args["target"] %= len(program)
    assert decode_program(encode_program(program)) == program
    assert assemble(disassemble(program)) == program


def test_field_layouts_fit_and_do_not_overlap():
    for op in OPCODES:
        used = set()
        for _, _, lsb, width in field_layout(op):
            bits = set(range(lsb, lsb + width))
            assert not bits & used, op
            assert max(bits) < WORD_BITS
            used |= bits
    assert len({spec.code for spec in OPCODES.values()}) == len(OPCODES)


def test_assembler_reads_labels_comments_and_index_registers():
    program = assemble("""
        # a counted loop
        LI rd=r1 imm=0
    top:
        ADDI rd=r1 ra=r1 imm=1      # count
        LOADV dst=0x40+r1 src=4096 len=r2
        BLT ra=r1 rb=r2 target=top
        HALT
    """)
    assert program[3].args["target"] == 1
    assert program[2].args["dst"] == Operand(0x40, 1)
    assert program[2].args["len"] == Operand(0, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FOO rd=r1", "line 1: unknown opcode 'FOO'"),
        ("LI rd=r1 value=3", "LI has no operand 'value'"),
        ("LI rd=x1 imm=3", r"LI.rd cannot be 'x1'"),
        ("LI rd=r1 imm=zero", r"LI.imm cannot be 'zero'"),
        ("JMP target=nowhere", "undefined label 'nowhere'"),
        ("a:\na:\nHALT", "label 'a' defined twice"),
        ("MM flags=fast", "MM has no flag 'fast'"),
    ],
)
def test_assembler_errors_name_the_line_and_the_problem(text, message):
    with pytest.raises(IsaError, match=message):
        assemble(text)


@pytest.mark.parametrize(
    ("instr", "message"),
    [
        (Instr("LI", {"rd": 16, "imm": 0}), r"LI.rd = 16 does not fit 4 unsigned bits"),
        (Instr("ADDI", {"rd": 1, "ra": 1, "imm": 2**31}), r"ADDI.imm = 2147483648 does not fit"),
        (Instr("LOADV", {"dst": Operand(2**22), "src": 0, "len": 1}), "LOADV.dst = 4194304"),
        (Instr("JMP", {"target": "later"}), "unresolved label 'later'"),
    ],
)
def test_encoder_refuses_what_does_not_fit(instr, message):
    with pytest.raises(IsaError, match=message):
        encode(instr)


def test_decoder_refuses_malformed_words():
    with pytest.raises(IsaError, match="unknown opcode 0xFF in word"):
        decode(0xFF)
    spec = OPCODES["MM"]
    flags_lsb = next(lsb for name, _, lsb, _ in field_layout("MM") if name == "flags")
    with pytest.raises(IsaError, match="undefined flag bits"):
        decode(spec.code | (0b1000 << flags_lsb))
    with pytest.raises(IsaError, match="bits set above its last field"):
        decode(OPCODES["HALT"].code | 1 << 200)
    words = encode_program([Instr("NOP"), Instr("HALT")])
    words[1, 0] = np.uint64(0x7F)
    with pytest.raises(IsaError, match="unknown opcode 0x7F in instruction 1"):
        decode_program(words)


def test_instr_refuses_unknown_operands_and_opcodes():
    with pytest.raises(IsaError, match="unknown opcode 'LOAD'"):
        Instr("LOAD")
    with pytest.raises(IsaError, match="VADD has no operand 'src'"):
        Instr("VADD", {"src": 0})


def test_float_immediates_hold_the_encoded_value():
    instr = Instr("SMULI", {"sd": 1, "sa": 2, "imm": 1 / 3})
    assert instr.args["imm"] == float(np.float32(1 / 3))
    assert decode(encode(instr)) == instr
