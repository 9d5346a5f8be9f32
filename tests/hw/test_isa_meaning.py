"""The meaning `hw.isa` states for each opcode is what the instruction-level simulator does.

Every layer reads an opcode's registers and ranges off its table entry (the timing model's
scoreboard, the RTL controller's hazards), so a range that is too small there would let two
instructions overlap that must not. Here each opcode runs on random operands and random state
twice: once as is, and once with everything it does not declare reading changed (vector-buffer
words outside its read ranges, registers it does not read, HBM when it reads none). Both runs
must have the same effects, and those effects must lie inside what it declares writing.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from hw.config import PRESETS
from hw.hbm import HbmImage
from hw.intmath import round_up
from hw.isa import OPCODES, Instr, OpSpec, Range, resolve
from hw.isasim import IsaCluster, IsaDevice
from hw.isasim.device import RING_OPS

CFG = PRESETS["tiny"]
RING_DEVICES = 3
LDB = 16  # beats per matrix row: room for every length below
HBM_BYTES = 1 << 16  # per channel: every HBM operand below stays inside it
TRIALS = 12


def _operands(spec: OpSpec, rng: random.Random) -> dict:
    """Random valid operand values: aligned vector addresses, lengths that fit a row."""
    a = CFG.align
    args: dict = {}
    for name, kind in spec.fields:
        if kind in ("reg", "sreg"):
            args[name] = rng.randrange(16)
        elif kind == "vaddr":
            args[name] = a * rng.randrange(512)
        elif kind == "haddr":
            scalar = any(r.space == "scalar" for r in spec.hreads + spec.hwrites)
            args[name] = 4 * rng.randrange(64) if scalar else 64 * rng.randrange(256)
        elif kind == "count":
            args[name] = rng.randrange(1, 5) if name == "ntok" else rng.randrange(1, 100)
        elif kind == "u16":
            args[name] = LDB
        elif kind == "u22":
            args[name] = a * rng.randrange(1, 16)
        elif kind == "i32":
            args[name] = rng.randrange(-1000, 1000)
        elif kind in ("f32", "f16"):
            args[name] = rng.uniform(-4, 4)
        elif kind == "target":
            args[name] = rng.randrange(100)
        elif kind == "flags":
            args[name] = frozenset(f for f in spec.flags if rng.random() < 0.5)
    if spec.name == "ALLGATHER":  # rows of `devices` slices that do not overlap
        args["slice"] = a * rng.randrange(1, 4)
        args["stride"] = RING_DEVICES * args["slice"] + a * rng.randrange(3)
        args["count"] = rng.randrange(1, 4)
    return args


def _fp16(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-4, 4, n).astype(np.float16)


def _image(rng: np.random.Generator) -> HbmImage:
    image = HbmImage(CFG)
    for c in range(CFG.hbm_ports):
        image.write_bytes(c, 0, _fp16(rng, HBM_BYTES // 2))
    return image


def _state(dev: IsaDevice) -> dict:
    return {"vbuf": dev.vbuf.view(np.uint16).copy(), "regs": np.array(dev.regs),
            "sregs": dev.sregs.view(np.uint32).copy(), "pc": dev.pc, "halted": dev.halted,
            "hbm": [ch.copy() for ch in dev.image.channels]}


def _mask(size: int, spans) -> np.ndarray:
    out = np.zeros(size, bool)
    for start, count in spans:
        out[start:start + count] = True
    return out


def _up(x: int) -> int:
    return round_up(x, CFG.align)


def _spans(ranges: tuple[Range, ...], v: dict, devices: int) -> list[tuple[int, int]]:
    ints = {k: int(x) for k, x in v.items() if isinstance(x, int | np.integer)}
    return [(ints[r.start], r.size(ints, _up, devices)) for r in ranges
            if r.enabled(v.get("flags", frozenset()))]


def _declared(spec: OpSpec, v: dict, devices: int) -> dict:
    """Masks of what `spec` declares reading and writing, for these operands."""
    regs = {role: _mask(16, [(v[n], 1) for n in spec.registers("reg", role)]) for role in "rw"}
    sregs = {role: _mask(16, [(v[n], 1) for n in spec.registers("sreg", role)])
             for role in "rw"}
    return {
        "vbuf": {"r": _mask(CFG.vbuf_words, _spans(spec.vreads, v, devices)),
                 "w": _mask(CFG.vbuf_words, _spans(spec.vwrites, v, devices))},
        "regs": regs, "sregs": sregs,
        "hbm_write_bytes": sum(n * (4 if r.space == "scalar" else 2)
                               for r, (_, n) in zip(spec.hwrites,
                                                    _spans(spec.hwrites, v, devices),
                                                    strict=True)),
    }


def _perturb(dev: IsaDevice, decl: dict, rng: np.random.Generator, spec: OpSpec) -> None:
    """Change everything the opcode does not declare reading."""
    keep = decl["vbuf"]["r"]
    dev.vbuf[~keep] = _fp16(rng, int((~keep).sum()))
    for k in range(1, 16):
        if not decl["regs"]["r"][k]:
            dev.regs[k] = int(rng.integers(-1000, 1000))
        if not decl["sregs"]["r"][k]:
            dev.sregs[k] = np.float32(rng.uniform(-4, 4))
    if not spec.hreads:
        dev.image = _image(rng)


def _check_effects(name: str, before: dict, after: dict, before2: dict, after2: dict,
                   decl: dict) -> None:
    """Inside the declared writes: the same result in both runs, or untouched in both; outside:
    untouched."""
    for key in ("vbuf", "regs", "sregs"):
        w = decl[key]["w"]
        same = after[key] == after2[key]
        untouched = (after[key] == before[key]) & (after2[key] == before2[key])
        bad = np.flatnonzero(~np.where(w, same | untouched, untouched))
        assert not len(bad), f"{name}: {key} {bad[:8].tolist()} outside its declared meaning"
    assert after["pc"] == after2["pc"], f"{name}: control flow depends on undeclared state"
    assert after["halted"] == after2["halted"]
    changed = 0
    for b, a in zip(before["hbm"], after["hbm"], strict=True):  # a channel grows with zeros
        changed += int((np.pad(b, (0, len(a) - len(b))) != a).sum())
    assert changed <= decl["hbm_write_bytes"], \
        f"{name}: {changed} HBM bytes changed, {decl['hbm_write_bytes']} declared"


def _device(program: list[Instr], seed: int) -> IsaDevice:
    rng = np.random.default_rng(seed)
    dev = IsaDevice(0, CFG, program, _image(rng))
    dev.vbuf[:] = _fp16(rng, CFG.vbuf_words)
    dev.regs = [0, *(int(x) for x in rng.integers(-1000, 1000, 15))]
    dev.sregs[:] = rng.uniform(-4, 4, 16).astype(np.float32)
    return dev


def _run_one(instr: Instr, seed: int, perturb: dict | None) -> tuple[dict, dict, dict]:
    program = [instr]
    if "prefetched" in instr.args.get("flags", ()):  # its PREFETCH comes first
        program.insert(0, Instr("PREFETCH", {k: instr.args[k] for k in ("w", "ldb", "rows",
                                                                         "cols")}))
    dev = _device(program, seed)
    if len(program) > 1:
        dev.execute(program[0], resolve(program[0], dev.regs))
    v = resolve(instr, dev.regs)
    decl = _declared(OPCODES[instr.op], v, 1)
    if perturb is not None:
        _perturb(dev, perturb, np.random.default_rng(seed + 1), OPCODES[instr.op])
    before = _state(dev)
    dev.execute(instr, v)
    return before, _state(dev), decl


@pytest.mark.parametrize("op", sorted(set(OPCODES) - RING_OPS))
def test_device_opcode_does_what_its_entry_says(op):
    rng = random.Random(op)
    for trial in range(TRIALS):
        instr = Instr(op, _operands(OPCODES[op], rng))
        before, after, decl = _run_one(instr, trial, None)
        before2, after2, _ = _run_one(instr, trial, decl)
        _check_effects(f"{instr} (trial {trial})", before, after, before2, after2, decl)


def _cluster_run(instr: Instr, seed: int, perturb: dict | None) -> list[tuple[dict, dict]]:
    cfg = dataclasses.replace(CFG, devices=RING_DEVICES)
    cluster = IsaCluster(cfg)
    cluster.load([[instr, Instr("HALT")]] * RING_DEVICES, None)
    cluster.start()
    out = []
    for d, dev in enumerate(cluster.devices):
        rng = np.random.default_rng(seed * 10 + d)
        dev.vbuf[:] = _fp16(rng, CFG.vbuf_words)
        dev.regs = [0, *(int(x) for x in rng.integers(-1000, 1000, 15))]
        dev.sregs[:] = rng.uniform(-4, 4, 16).astype(np.float32)
        if perturb is not None:
            _perturb(dev, perturb, np.random.default_rng(seed * 10 + d + 5), OPCODES[instr.op])
        out.append(_state(dev))
    cluster.wait()
    # the effects of the ring instruction alone: the HALT after it changes nothing but pc
    return [(b, {**_state(dev), "pc": b["pc"] + 1, "halted": False})
            for b, dev in zip(out, cluster.devices, strict=True)]


@pytest.mark.parametrize("op", sorted(RING_OPS))
def test_ring_opcode_does_what_its_entry_says(op):
    rng = random.Random(op)
    for trial in range(TRIALS):
        instr = Instr(op, _operands(OPCODES[op], rng))
        decl = _declared(OPCODES[op], resolve(instr, [0] * 16), RING_DEVICES)
        first = _cluster_run(instr, trial, None)
        second = _cluster_run(instr, trial, decl)
        for d, ((b1, a1), (b2, a2)) in enumerate(zip(first, second, strict=True)):
            _check_effects(f"{instr} (trial {trial}, device {d})", b1, a1, b2, a2, decl)


def test_a_range_too_small_is_caught():
    """The check above fails when the table understates what an opcode touches."""
    spec = OPCODES["VADD"]
    short = dataclasses.replace(spec, vwrites=(Range.parse("dst[1]"),))
    instr = Instr("VADD", {"dst": 64, "a": 0, "b": 32, "len": 24})
    before, after, decl = _run_one(instr, 0, None)
    before2, after2, _ = _run_one(instr, 0, decl)
    decl_short = _declared(short, resolve(instr, [0] * 16), 1)
    with pytest.raises(AssertionError, match="outside its declared meaning"):
        _check_effects("VADD", before, after, before2, after2, decl_short)
