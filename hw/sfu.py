"""Special-function units: the bit-accurate integer algorithms behind `exp`, `reciprocal`,
`rsqrt` and `gelu`, and the tables the RTL's ROMs are generated from.

Every function here takes FP16 bit patterns (uint16) and returns FP16 bit patterns. Each one
is a fixed sequence of integer operations that the RTL (`rtl.arith.sfu`) performs step for
step:

1. unpack the FP16 input into sign, an 11-bit significand `m` in [1024, 2048) and an unbiased
   exponent `E` (subnormal inputs are normalized, so `x = m * 2**(E - 10)` exactly);
2. reduce the argument to `t` in [0, 1) (function-specific, below);
3. evaluate a piecewise-quadratic approximation: `t` splits into a table index `i` (its top
   `index_bits`) and an offset `r` (the remaining `offset_bits = R` bits), and
   `p = C0[i] + ((C1[i] * r) >> R) + ((C2[i] * ((r * r) >> R)) >> R)`
   with arithmetic (floor) right shifts; `p` is the function value on the reduced range with
   `FRAC_BITS` fractional bits (times `2**shift[i]` where a table stores a segment shift);
4. form the result as an integer magnitude times a power of two and round it to FP16 once,
   round-to-nearest-even, with gradual underflow and overflow to Inf (`round_scaled`).

The coefficients interpolate the function at the three Chebyshev nodes of each segment. They
are computed with `decimal` at 40 digits (correctly rounded `exp`, `ln`, `sqrt`), so every
machine builds the same tables. Argument reduction per function:

- exp: `|x|` to fixed point with 22 fractional bits (truncated), times `LOG2E` (log2(e) with 24
  fractional bits), shifted back to 22 fractional bits; negated for negative `x`; `n` is its
  floor and `t` its fraction, so `exp(x) ~ 2**t * 2**n`. `|x| >= 32` saturates (+Inf or +0).
- reciprocal: `t = (m - 1024) / 1024`, `1/x = 2/(1 + t) * 2**(-E - 1)`.
- rsqrt: the exponent's parity selects one of two half tables, `2/sqrt(1 + t)` (even `E`) or
  `sqrt(2)/sqrt(1 + t)` (odd `E`); the result exponent is `-(E >> 1) - 1`.
- gelu: `gelu(x) = x * s(x)` with `s(x) = (1 + tanh(sqrt(2/pi) * (x + 0.044715 x**3))) / 2`.
  `x + 8` in fixed point with 22 fractional bits indexes 512 segments of width 1/32 on
  [-8, 8); each segment stores `s * 2**shift[i]` so that the tiny values of the negative tail
  keep full relative precision. The product `m * p` is rounded once. `|x| >= 8` returns `x`
  (positive) or -0 (negative).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal, localcontext

import numpy as np

__all__ = [
    "EXP_FRAC_BITS",
    "FP16_INF_BITS",
    "FP16_NAN_BITS",
    "FRAC_BITS",
    "GELU_FRAC_BITS",
    "LOG2E",
    "LOG2E_FRAC_BITS",
    "QuadTable",
    "exp_bits",
    "gelu_bits",
    "reciprocal_bits",
    "round_scaled",
    "rsqrt_bits",
    "table",
    "unpack16",
]

#: The canonical quiet NaN every FP16 result uses (`hw.numerics` re-exports it), and +Inf.
FP16_NAN_BITS = 0x7E00
FP16_INF_BITS = 0x7C00
#: Fractional bits of every table's output `p` (before a segment shift).
FRAC_BITS = 22
#: Fractional bits of exp's fixed-point argument |x| and of y = x * log2(e).
EXP_FRAC_BITS = 22
#: Fractional bits of the constant LOG2E.
LOG2E_FRAC_BITS = 24
#: Fractional bits of gelu's fixed-point argument x + 8.
GELU_FRAC_BITS = 22
#: Magnitude at which exp saturates: |x| >= 2**EXP_SATURATE_LOG2 gives +Inf or +0.
EXP_SATURATE_LOG2 = 5
#: Magnitude at which gelu becomes x (x > 0) or -0 (x < 0).
GELU_SATURATE_LOG2 = 3

_DIGITS = 40


def _pi() -> Decimal:
    # Machin's formula, pi = 16 atan(1/5) - 4 atan(1/239), by the atan series.
    def atan_inv(n: int) -> Decimal:
        x = Decimal(1) / n
        x2 = x * x
        term, total, k = x, x, 1
        while True:
            term *= -x2
            add = term / (2 * k + 1)
            if add == 0 or abs(add) < Decimal(10) ** -(_DIGITS + 5):
                break
            total += add
            k += 1
        return total

    return 16 * atan_inv(5) - 4 * atan_inv(239)


@dataclass(frozen=True)
class QuadTable:
    """Piecewise-quadratic segments: index `i`, offset `r` of `offset_bits` bits."""

    name: str
    index_bits: int  #: width of the segment index i
    offset_bits: int  #: R: width of the offset r inside a segment
    c0: np.ndarray  #: int64, constant term, FRAC_BITS (+ shift) fractional bits
    c1: np.ndarray  #: int64, linear term in t = r / 2**R
    c2: np.ndarray  #: int64, quadratic term in t**2
    shift: np.ndarray  #: int64, per-segment extra exponent of p (0 where unused)

    def evaluate(self, i: np.ndarray, r: np.ndarray) -> np.ndarray:
        """p = C0 + ((C1 r) >> R) + ((C2 ((r r) >> R)) >> R), all in int64."""
        R = self.offset_bits
        i = np.asarray(i, np.int64)
        r = np.asarray(r, np.int64)
        return self.c0[i] + ((self.c1[i] * r) >> R) + ((self.c2[i] * ((r * r) >> R)) >> R)

    def widths(self) -> dict[str, int]:
        """Signed bit widths that hold every coefficient (for the RTL's ROM)."""
        def signed_width(a: np.ndarray) -> int:
            lo, hi = int(a.min()), int(a.max())
            return max(lo.bit_length() if lo >= 0 else (~lo).bit_length(),
                       hi.bit_length() if hi >= 0 else (~hi).bit_length()) + 1
        return {k: signed_width(getattr(self, k)) for k in ("c0", "c1", "c2", "shift")}


def _fit(f, starts: list[Decimal], h: Decimal, scales: list[int]) -> tuple[list[int], ...]:
    """Quadratic through f at the 3 Chebyshev nodes of each segment [a, a + h), as integers
    scaled by 2**(FRAC_BITS + scale) in the normalized offset t in [0, 1)."""
    half_sqrt3 = Decimal(3).sqrt() / 2
    nodes = [(1 - half_sqrt3) / 2, Decimal(1) / 2, (1 + half_sqrt3) / 2]
    c0, c1, c2 = [], [], []
    for a, scale in zip(starts, scales, strict=True):
        k = Decimal(2) ** (FRAC_BITS + scale)
        t0, t1, t2 = nodes
        f0, f1, f2 = (f(a + h * t) * k for t in nodes)
        d01 = (f1 - f0) / (t1 - t0)
        d12 = (f2 - f1) / (t2 - t1)
        d012 = (d12 - d01) / (t2 - t0)
        a2 = d012
        a1 = d01 - d012 * (t0 + t1)
        a0 = f0 - d01 * t0 + d012 * t0 * t1
        c0.append(int(a0.to_integral_value()))
        c1.append(int(a1.to_integral_value()))
        c2.append(int(a2.to_integral_value()))
    return c0, c1, c2


def _make(name, f, starts, h, scales, index_bits, offset_bits) -> QuadTable:
    c0, c1, c2 = _fit(f, starts, h, scales)
    return QuadTable(
        name=name, index_bits=index_bits, offset_bits=offset_bits,
        c0=np.array(c0, np.int64), c1=np.array(c1, np.int64), c2=np.array(c2, np.int64),
        shift=np.array(scales, np.int64),
    )


@functools.cache
def table(name: str) -> QuadTable:
    """The table of one function: "exp2", "reciprocal", "rsqrt" or "gelu"."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        if name == "exp2":
            k = 5
            ln2 = Decimal(2).ln()
            h = Decimal(1) / 2**k
            return _make(name, lambda u: (u * ln2).exp(), [i * h for i in range(2**k)], h,
                         [0] * 2**k, k, EXP_FRAC_BITS - k)
        if name == "reciprocal":
            k = 5
            h = Decimal(1) / 2**k
            return _make(name, lambda u: 2 / (1 + u), [i * h for i in range(2**k)], h,
                         [0] * 2**k, k, 10 - k)
        if name == "rsqrt":
            # Index bit k (the MSB) is the exponent's parity: 0 even, 1 odd.
            k = 5
            h = Decimal(1) / 2**k
            sqrt2 = Decimal(2).sqrt()
            starts = [i * h for i in range(2**k)]

            def f(u: Decimal) -> Decimal:
                # u in [0, 1) for the even half; u in [2, 3) stands for 1 + (u - 2), odd half.
                if u < 2:
                    return 2 / (1 + u).sqrt()
                return sqrt2 / (u - 1).sqrt()

            return _make(name, f, starts + [2 + s for s in starts], h, [0] * 2**(k + 1),
                         k + 1, 10 - k)
        if name == "gelu":
            k = 9  # 512 segments of width 1/32 over [-8, 8)
            h = Decimal(1) / 32
            c = (2 / _pi()).sqrt()

            def s(x: Decimal) -> Decimal:
                # (1 + tanh(v)) / 2 = 1 / (1 + exp(-2 v))
                v = c * (x + Decimal("0.044715") * x * x * x)
                return 1 / (1 + (-2 * v).exp())

            starts = [-8 + i * h for i in range(2**k)]
            # s rises with x: its largest value on a segment is at the right end; scale each
            # segment so that this value lies in [1, 2).
            scales = []
            for a in starts:
                top = s(a + h)
                e = 0
                while top * Decimal(2) ** e < 1:
                    e += 1
                scales.append(e)
            return _make(name, s, starts, h, scales, k, GELU_FRAC_BITS + 4 - k)
        raise ValueError(f"no table named {name!r}; known: exp2, reciprocal, rsqrt, gelu")


@functools.cache
def _log2e() -> int:
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        return int((Decimal(2) ** LOG2E_FRAC_BITS / Decimal(2).ln()).to_integral_value())


#: round(log2(e) * 2**LOG2E_FRAC_BITS): the constant exp multiplies by.
LOG2E = _log2e()


def unpack16(bits: np.ndarray) -> tuple[np.ndarray, ...]:
    """FP16 bits -> (sign, m, E, is_nan, is_inf, is_zero), all int64 arrays.

    For finite non-zero inputs `x = (-1)**sign * m * 2**(E - 10)` with m in [1024, 2048):
    subnormals are normalized (their E goes down to -24).
    """
    b = np.asarray(bits, np.int64)
    sign = b >> 15
    e = (b >> 10) & 31
    f = b & 1023
    is_nan = (e == 31) & (f != 0)
    is_inf = (e == 31) & (f == 0)
    is_zero = (e == 0) & (f == 0)
    # Subnormal: f has bit length n (1..10): m = f << (11 - n), E = n - 25.
    n = _bitlen(f)
    sub = (e == 0) & (f != 0)
    m = np.where(sub, f << np.clip(11 - n, 0, 11), f | 1024)
    E = np.where(sub, n - 25, e - 15)
    return sign, m, E, is_nan, is_inf, is_zero


def _bitlen(v: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values below 2**53 (0 for 0)."""
    v = np.asarray(v, np.int64)
    return np.where(v > 0, np.frexp(v.astype(np.float64))[1], 0).astype(np.int64)


def round_scaled(sign: np.ndarray, mag: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """FP16 bits of (-1)**sign * mag * 2**scale, rounded once to nearest, ties to even.

    `mag` is a non-negative integer below 2**52. Results below the normal range round onto
    the subnormal grid (2**-24); magnitudes that round to 65520 or more become Inf.
    """
    mag = np.asarray(mag, np.int64)
    scale = np.asarray(scale, np.int64)
    E = _bitlen(mag) - 1 + scale  # exponent of the leading bit
    Ec = np.maximum(E, -14)  # subnormals keep the exponent of the smallest binade
    sh = Ec - 10 - scale  # right shift that leaves 11 bits (fewer for subnormals)
    shr = np.clip(sh, 0, 62)
    shl = np.clip(-sh, 0, 62)
    q = (mag >> shr) << shl
    rem = mag & ((np.int64(1) << shr) - 1)
    half = (np.int64(1) << shr) >> 1
    up = (shr > 0) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    # The FP16 encoding is monotonic in magnitude, so a rounding carry into the exponent
    # field (and from there into Inf) comes out right by plain addition.
    bits = ((np.minimum(Ec, 16) + 14) << 10) + q + up
    bits = np.where(E > 15, FP16_INF_BITS, np.minimum(bits, FP16_INF_BITS))
    bits = np.where(mag == 0, 0, bits)
    return (bits | (np.asarray(sign, np.int64) << 15)).astype(np.uint16)


def _fixed(m: np.ndarray, E: np.ndarray, frac_bits: int) -> np.ndarray:
    """|x| = m * 2**(E - 10) as an integer with frac_bits fractional bits, truncated."""
    s = E - 10 + frac_bits
    return np.where(s >= 0, m << np.clip(s, 0, 62), m >> np.clip(-s, 0, 62))


def _finish(bits, is_nan, specials) -> np.ndarray:
    """Apply (mask, value) overrides in order, then NaN."""
    out = np.asarray(bits, np.uint16)
    for mask, value in specials:
        out = np.where(mask, np.asarray(value, np.uint16), out)
    return np.where(is_nan, np.uint16(FP16_NAN_BITS), out).astype(np.uint16)


def exp_bits(bits: np.ndarray) -> np.ndarray:
    """exp(x) on FP16 bit patterns."""
    sign, m, E, is_nan, is_inf, is_zero = unpack16(bits)
    big = E >= EXP_SATURATE_LOG2
    X = _fixed(m, np.minimum(E, EXP_SATURATE_LOG2 - 1), EXP_FRAC_BITS)
    X = np.where(is_zero, 0, X)
    Y = (X * LOG2E) >> LOG2E_FRAC_BITS
    Y = np.where(sign == 1, -Y, Y)
    n = Y >> EXP_FRAC_BITS
    t = Y & ((1 << EXP_FRAC_BITS) - 1)
    tab = table("exp2")
    R = tab.offset_bits
    p = tab.evaluate(t >> R, t & ((1 << R) - 1))
    out = round_scaled(np.zeros_like(sign), p, n - FRAC_BITS)
    saturate = big | is_inf
    return _finish(out, is_nan, [(saturate & (sign == 0), FP16_INF_BITS),
                                 (saturate & (sign == 1), 0)])


def reciprocal_bits(bits: np.ndarray) -> np.ndarray:
    """1/x on FP16 bit patterns."""
    sign, m, E, is_nan, is_inf, is_zero = unpack16(bits)
    u = m - 1024
    tab = table("reciprocal")
    R = tab.offset_bits
    p = tab.evaluate(u >> R, u & ((1 << R) - 1))
    out = round_scaled(sign, p, -E - 1 - FRAC_BITS)
    return _finish(out, is_nan, [(is_zero, (sign << 15) | FP16_INF_BITS), (is_inf, sign << 15)])


def rsqrt_bits(bits: np.ndarray) -> np.ndarray:
    """1/sqrt(x) on FP16 bit patterns."""
    sign, m, E, is_nan, is_inf, is_zero = unpack16(bits)
    u = m - 1024
    tab = table("rsqrt")
    R = tab.offset_bits
    i = ((E & 1) << (tab.index_bits - 1)) | (u >> R)
    p = tab.evaluate(i, u & ((1 << R) - 1))
    out = round_scaled(np.zeros_like(sign), p, -(E >> 1) - 1 - FRAC_BITS)
    negative = (sign == 1) & ~is_zero
    return _finish(out, is_nan, [
        (is_zero, (sign << 15) | FP16_INF_BITS),  # rsqrt(+-0) = +-Inf
        (is_inf, 0),  # rsqrt(+Inf) = +0 (-Inf is caught as negative)
        (negative, FP16_NAN_BITS),
    ])


def gelu_bits(bits: np.ndarray) -> np.ndarray:
    """gelu(x) (tanh form) on FP16 bit patterns."""
    sign, m, E, is_nan, is_inf, is_zero = unpack16(bits)
    big = E >= GELU_SATURATE_LOG2
    X = _fixed(m, np.minimum(E, GELU_SATURATE_LOG2 - 1), GELU_FRAC_BITS)
    X = np.where(is_zero, 0, X)
    U = np.where(sign == 1, -X, X) + (8 << GELU_FRAC_BITS)
    tab = table("gelu")
    R = tab.offset_bits
    i = U >> R
    p = tab.evaluate(i, U & ((1 << R) - 1))
    out = round_scaled(sign, m * p, E - 10 - FRAC_BITS - tab.shift[i])
    b = np.asarray(bits, np.uint16)
    saturate = big | is_inf
    return _finish(out, is_nan, [
        (saturate & (sign == 0), b),
        (saturate & (sign == 1), 0x8000),
        (is_zero, b),
    ])
