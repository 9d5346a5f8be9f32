"""The instruction set: encodings and text round-trip, malformed input is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.intmath import round_up
from hw.isa import (
    KINDS,
    OPCODES,
    WORD_BITS,
    FloatImm,
    Instr,
    IsaError,
    Operand,
    Range,
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


# -- every word that decodes: binary and text round trips are exact ------------------------------

def _nan_bits(width: int):
    """NaN bit patterns of a float `width` wide: any sign, any non-zero payload (quiet or
    signalling)."""
    mant = {32: 23, 16: 10}[width]
    exp = ((1 << (width - 1 - mant)) - 1) << mant
    return st.builds(lambda sign, payload: sign << (width - 1) | exp | payload,
                     st.integers(0, 1), st.integers(1, (1 << mant) - 1))


def _field_bits(spec, name, kind_name, width):
    kind = KINDS[kind_name]
    if kind.fmt == "flags":
        return st.integers(0, (1 << len(spec.flags)) - 1)
    if kind.fmt in ("f32", "f16"):
        return st.one_of(st.integers(0, (1 << width) - 1), _nan_bits(width))
    return st.integers(0, (1 << width) - 1)


@st.composite
def words(draw):
    """A word that decodes: a real opcode, every field any value it can hold."""
    spec = OPCODES[draw(st.sampled_from(sorted(OPCODES)))]
    word = spec.code
    for name, kind, lsb, width in field_layout(spec.name):
        word |= draw(_field_bits(spec, name, kind, width)) << lsb
    return word


@settings(max_examples=1000, deadline=None)
@given(words())
def test_every_decodable_word_encodes_back_to_itself(word):
    assert encode(decode(word)) == word


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**WORD_BITS - 1) | st.integers(0, 2**64 - 1))
def test_any_word_decodes_exactly_or_is_refused_with_isa_error(word):
    try:
        instr = decode(word)
    except IsaError:
        return
    assert encode(instr) == word


@settings(max_examples=150, deadline=None)
@given(st.lists(words(), min_size=1, max_size=12))
def test_disassembly_of_any_decoded_program_assembles_to_the_same_words(program_words):
    """Targets anywhere in 0..65535 (also beyond the end), NaN immediates of any payload."""
    program = [decode(w) for w in program_words]
    assert [encode(i) for i in assemble(disassemble(program))] == program_words


def test_signalling_nan_immediates_keep_their_bits():
    word = 0xFF827767A40  # SLI s10, an FP32 signalling NaN with the sign set
    instr = decode(word)
    assert instr.op == "SLI"
    assert isinstance(instr["imm"], FloatImm)
    assert instr["imm"].bits == 0xFF827767
    assert encode(instr) == word
    text = disassemble([instr])
    assert "imm=bits:0xff827767" in text
    assert [encode(i) for i in assemble(text)] == [word]
    f16 = Instr("SADDH", {"sd": 1, "sa": 2, "imm": FloatImm(0xFC01, "f16")})  # -sNaN FP16
    assert "imm=bits:0xfc01" in str(f16)
    assert encode(assemble(str(f16))[0]) == encode(f16)
    assert decode(encode(f16))["imm"].bits == 0xFC01


def test_branch_beyond_the_end_is_written_as_its_index():
    program = [Instr("JMP", {"target": 9}), Instr("BEQ", {"ra": 1, "rb": 2, "target": 2}),
               Instr("HALT")]
    text = disassemble(program)
    assert "target=@9" in text
    assert "L3" not in text
    assert "L9" not in text
    assert assemble(text) == program


@pytest.mark.parametrize("word", ["0x40", 1.5, None, True, -1, 1 << WORD_BITS, [0x40]])
def test_decode_refuses_what_is_not_a_word_with_isa_error(word):
    with pytest.raises(IsaError):
        decode(word)


@pytest.mark.parametrize("words", [
    np.array([-1, 0, 0, 0]), np.array([1.0, 0, 0, 0]), np.zeros((2, 2), np.uint64),
    np.zeros(3, np.uint64), np.zeros((1, 2, 4), np.uint64), "abc", None, [[1, 0], [0]],
    [[2**70, 0, 0, 0]], np.array([[0xFF, 0, 0, 0]], np.uint64)])
def test_decode_program_refuses_bad_input_with_isa_error(words):
    with pytest.raises(IsaError):
        decode_program(words)


@pytest.mark.parametrize("text", ["SLI sd=s1 imm=bits:0x1ffffffff", "SLI sd=s1 imm=bits:zz",
                                  "JMP target=@-1", "JMP target=@x", "SADDH sd=s1 sa=s1 "
                                  "imm=bits:0x10000"])
def test_assembler_refuses_bad_bit_patterns_and_targets(text):
    with pytest.raises(IsaError, match="cannot be"):
        assemble(text)


def test_float_immediates_compare_by_bits_and_survive_pickling():
    import pickle

    nan = FloatImm(0x7F800001, "f32")
    assert nan == FloatImm(0x7F800001, "f32")
    assert nan != FloatImm(0x7FC00000, "f32")
    assert hash(nan) == hash(FloatImm(0x7F800001, "f32"))
    assert FloatImm.of(-0.0, "f32") != FloatImm.of(0.0, "f32")
    assert FloatImm.of(1.5, "f16") == 1.5
    assert pickle.loads(pickle.dumps(nan)).bits == 0x7F800001
    instr = decode(0xFF827767A40)
    assert pickle.loads(pickle.dumps(instr)) == instr
    with pytest.raises(IsaError, match=r"f16 bits must be an integer in 0\.\.0xffff"):
        FloatImm(0x10000, "f16")
    with pytest.raises(IsaError, match="must be a number"):
        Instr("SLI", {"sd": 1, "imm": "1.0"})


@pytest.mark.parametrize("text", ["a[len // 2]", "a[max(len, 1)]", "a[len ** 2]", "a[1.5]",
                                  "a[up(len, 2)]", "a[len if len else 1]"])
def test_range_lengths_are_limited_to_what_hardware_evaluates(text):
    """A range length is evaluated over Amaranth values by the RTL scoreboard too, so only
    integers, operands, + - * and up() are accepted."""
    with pytest.raises(AssertionError):
        Range.parse(text)


def test_range_lengths_evaluate_over_operands_up_and_devices():
    mm_src = OPCODES["MM"].vreads[0]
    assert str(mm_src) == "src[(ntok - 1) * sstride + up(cols)]"
    assert mm_src.size({"ntok": 3, "sstride": 64, "cols": 70}, lambda x: round_up(x, 16),
                       4) == 2 * 64 + 80
    gather = OPCODES["ALLGATHER"].vwrites[0]
    assert gather.size({"count": 2, "stride": 96, "slice": 32}, None, 3) == 96 + 3 * 32
    bias = OPCODES["MM"].vreads[1]
    assert bias.enabled(frozenset({"bias"}))
    assert not bias.enabled(frozenset())
    direct = OPCODES["MM"].hreads[0]
    assert direct.enabled(frozenset())
    assert not direct.enabled(frozenset({"prefetched"}))
