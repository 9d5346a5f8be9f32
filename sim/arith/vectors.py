"""Operands for the arithmetic units: edge cases and random values, and the lane schedules.

Values are bit patterns (uint16 for FP16, uint32 for FP32). Random draws mix uniform bit
patterns (every class: zeros, subnormals, Inf, NaN, extreme exponents) with values shaped like
the accelerator's data, and targeted sets: ties, cancellation, the flush-to-zero boundary.
"""

from __future__ import annotations

import random

import numpy as np

from hw import numerics as nx

__all__ = [
    "F16_EDGES",
    "F32_EDGES",
    "Beat",
    "add_operands",
    "f16_random",
    "f32_random",
    "mul32_operands",
    "round_operands",
    "schedule_rows",
]

#: FP16 edge cases: signed zeros, smallest/largest subnormals, smallest normal, values around
#: 1, the largest normal, Inf, quiet and signalling NaNs.
F16_EDGES = np.array([
    0x0000, 0x8000, 0x0001, 0x8001, 0x0002, 0x0200, 0x03FF, 0x83FF, 0x0400, 0x8400, 0x0401,
    0x1C00, 0x2400, 0x3555, 0xB555, 0x3800, 0x3BFF, 0x3C00, 0xBC00, 0x3C01, 0x4000, 0x57FF,
    0x5800, 0x5BFF, 0x7BFE, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7C01, 0x7DFF, 0x7E00, 0xFE00,
    0xFFFF,
], np.uint16)

#: FP32 edge cases: signed zeros, subnormals (flushed), the smallest normals, values around 1,
#: 2**-24 and 2**24, the largest normal, Inf, NaNs.
F32_EDGES = np.array([
    0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x80800000, 0x00800001,
    0x00FFFFFF, 0x01000000, 0x33800000, 0x34000000, 0x3EAAAAAB, 0x3F7FFFFF, 0x3F800000,
    0xBF800000, 0x3F800001, 0x3FFFFFFF, 0x4B7FFFFF, 0x4B800000, 0x7F000000, 0x7F7FFFFF,
    0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7F800001, 0x7FC00000, 0xFFC00001,
], np.uint32)


def f16_random(rng: np.random.Generator, n: int) -> np.ndarray:
    """Half uniform FP16 bit patterns, half activation-like normals of random scale."""
    uniform = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    scale = np.exp(rng.uniform(np.log(1e-4), np.log(300.0), n))
    with np.errstate(over="ignore"):
        typical = nx.bits16((rng.standard_normal(n) * scale).astype(np.float16))
    return np.where(rng.random(n) < 0.5, uniform, typical)


def _f32(sign, exp, frac) -> np.ndarray:
    return ((np.asarray(sign, np.uint32) << 31) | (np.asarray(exp, np.uint32) << 23)
            | np.asarray(frac, np.uint32)).astype(np.uint32)


def f32_random(rng: np.random.Generator, n: int, spread: float = 12.0) -> np.ndarray:
    """A quarter uniform FP32 bit patterns, the rest normals with exponents around 1."""
    uniform = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    exp = np.clip(np.round(127 + rng.standard_normal(n) * spread), 1, 254)
    typical = _f32(rng.integers(0, 2, n), exp, rng.integers(0, 1 << 23, n))
    return np.where(rng.random(n) < 0.25, uniform, typical)


def _parts(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def add_operands(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """FP32 operand pairs: random, cancellation, sticky-range alignment, ties, the
    flush-to-zero boundary, overflow."""
    n1, n2, n3, n4, n5, n6 = _parts(n, 6)
    a, b = [], []
    # independent operands
    a.append(f32_random(rng, n1))
    b.append(f32_random(rng, n1))
    # catastrophic cancellation: b = -a nudged by a few units in the last place
    x = f32_random(rng, n2, spread=30) & np.uint32(0x7FFFFFFF)
    x = np.clip(x, 0x00800100, 0x7F7FFF00).astype(np.uint32)
    a.append(x)
    b.append(((x.astype(np.int64) + rng.integers(-40, 41, n2)) | (1 << 31)).astype(np.uint32))
    # exponent differences around the guard/round/sticky range
    e = rng.integers(40, 215, n3)
    d = rng.integers(18, 31, n3)
    a.append(_f32(rng.integers(0, 2, n3), e, rng.integers(0, 1 << 23, n3)))
    b.append(_f32(rng.integers(0, 2, n3), e - d, rng.integers(0, 1 << 23, n3)))
    # exact ties: b is half a unit in the last place of a (sometimes with a sticky tail)
    e = rng.integers(30, 220, n4)
    a.append(_f32(rng.integers(0, 2, n4), e, rng.integers(0, 1 << 23, n4)))
    b.append(_f32(rng.integers(0, 2, n4), e - 24, rng.integers(0, 2, n4)))
    # near 2**-126: results flush or stay normal
    a.append(_f32(rng.integers(0, 2, n5), rng.integers(0, 4, n5), rng.integers(0, 1 << 23, n5)))
    b.append(_f32(rng.integers(0, 2, n5), rng.integers(0, 4, n5), rng.integers(0, 1 << 23, n5)))
    # near the top: overflow to Inf or not
    s = rng.integers(0, 2, n6)
    a.append(_f32(s, rng.integers(252, 255, n6), rng.integers(0, 1 << 23, n6)))
    b.append(_f32(s ^ (rng.random(n6) < 0.2), rng.integers(250, 255, n6),
                  rng.integers(0, 1 << 23, n6)))
    return np.concatenate(a), np.concatenate(b)


def mul32_operands(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """FP32 operand pairs: random, short significands (frequent ties), products near
    2**-126 and near overflow."""
    n1, n2, n3, n4 = _parts(n, 4)
    a = [f32_random(rng, n1), None, None, None]
    b = [f32_random(rng, n1), None, None, None]
    # 12-bit significands: products have at most 26 bits, so the rounding point often
    # falls on an exact half
    a[1] = _f32(rng.integers(0, 2, n2), rng.integers(100, 150, n2),
                rng.integers(0, 1 << 12, n2) << 11)
    b[1] = _f32(rng.integers(0, 2, n2), rng.integers(100, 150, n2),
                rng.integers(0, 1 << 12, n2) << 11)
    ea = rng.integers(1, 127, n3)
    a[2] = _f32(rng.integers(0, 2, n3), ea, rng.integers(0, 1 << 23, n3))
    b[2] = _f32(rng.integers(0, 2, n3), np.clip(128 - ea + rng.integers(-3, 3, n3), 1, 254),
                rng.integers(0, 1 << 23, n3))
    ea = rng.integers(127, 255, n4)
    a[3] = _f32(rng.integers(0, 2, n4), ea, rng.integers(0, 1 << 23, n4))
    b[3] = _f32(rng.integers(0, 2, n4), np.clip(254 - ea + 127 + rng.integers(-2, 3, n4), 1, 254),
                rng.integers(0, 1 << 23, n4))
    return np.concatenate(a), np.concatenate(b)


def round_operands(rng: np.random.Generator, n: int) -> np.ndarray:
    """FP32 values for the FP16 rounding: random, the FP16 range, exact ties in the normal and
    subnormal ranges, around the overflow threshold."""
    n1, n2, n3, n4 = _parts(n, 4)
    parts = [f32_random(rng, n1)]
    parts.append(_f32(rng.integers(0, 2, n2), rng.integers(127 - 27, 127 + 17, n2),
                      rng.integers(0, 1 << 23, n2)))
    # ties: the bits below the FP16 rounding point are exactly 100...0
    e = rng.integers(-25, 16, n3)
    drop = 13 + np.clip(-14 - e, 0, 11)  # FP32 fraction bits below FP16's last place
    frac = (rng.integers(0, 1 << 23, n3) >> drop << drop) | (1 << (drop - 1))
    parts.append(_f32(rng.integers(0, 2, n3), e + 127, frac & ((1 << 23) - 1)))
    parts.append(_f32(rng.integers(0, 2, n4), rng.integers(127 + 15, 127 + 16, n4),
                      rng.integers((1 << 23) - (1 << 14), 1 << 23, n4)))
    return np.concatenate(parts)


class Beat:
    """One beat of a lane schedule: element k of row `row`, tagged `tag`."""

    __slots__ = ("first", "k", "last", "row", "tag")

    def __init__(self, row: int, k: int, tag: int, first: bool, last: bool):
        self.row, self.k, self.tag, self.first, self.last = row, k, tag, first, last


def schedule_rows(rng: np.random.Generator, lengths: list[int], max_open: int,
                  round_robin: bool) -> list[Beat]:
    """The order in which a producer sends the beats of rows with these beat counts.

    At most `max_open` rows are open at once and open rows have distinct tags. Round-robin
    cycles through `max_open` turns, one per slot of the lane's accumulator loop: a turn sends
    its open row's next beat, or opens the next row once the previous one has finished (one
    beat per cycle in the lane). The random order sends each beat to a random open row and
    opens new rows at random moments.
    """
    pick = random.Random(int(rng.integers(1 << 32)))  # scalar draws: numpy's are slow one by one
    beats: list[Beat] = []
    progress: dict[int, int] = {}
    tags: dict[int, int] = {}
    free = list(range(max_open))
    next_row = 0

    def start() -> int:
        nonlocal next_row
        row = next_row
        next_row += 1
        tags[row] = free.pop(pick.randrange(len(free)))
        progress[row] = 0
        return row

    def send(row: int) -> bool:
        k = progress[row]
        last = k == lengths[row] - 1
        beats.append(Beat(row, k, tags[row], k == 0, last))
        progress[row] = k + 1
        if last:
            free.append(tags[row])
        return last

    if round_robin:
        turns: list[int | None] = [None] * max_open
        while next_row < len(lengths) or any(t is not None for t in turns):
            for slot, row in enumerate(turns):
                if row is None and next_row < len(lengths):
                    row = start()
                if row is not None:
                    turns[slot] = None if send(row) else row
        return beats
    open_rows: list[int] = []
    while next_row < len(lengths) or open_rows:
        if next_row < len(lengths) and len(open_rows) < max_open and (
                not open_rows or pick.random() < 0.3):
            row = start()
            open_rows.append(row)
        else:
            row = open_rows[pick.randrange(len(open_rows))]
        if send(row):
            open_rows.remove(row)
    return beats
