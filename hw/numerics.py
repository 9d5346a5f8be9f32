"""Bit-accurate model of every arithmetic unit of the Tandem accelerator.

Each function computes exactly what the RTL unit of the same name in `rtl.arith` computes,
bit for bit, vectorized over leading axes. The instruction-level simulator executes programs
through these functions, so its results are the hardware's results.

Number formats and rounding (the decisions every unit follows)
---------------------------------------------------------------
- Storage: IEEE binary16 (FP16) for weights and activations in memory.
- Products: FP16 x FP16 products are exact. An FP16 significand has 11 bits, so a product has
  at most 22 and lies between 2**-48 and 2**32: it is exact in FP32, which is the product
  format (`mul`).
- Accumulation: FP32 (binary32) with round-to-nearest-even after every addition (`add`). Sums
  run in one fixed order: a `width`-input pairwise tree per beat (`tree_sum`), then the beats
  of a row in sequence, oldest first (`dot`). The order does not depend on any pipeline
  latency: the RTL lane keeps one partial sum per row in its adder loop and adds a row's
  next beat only to that row's partial.
- Results: rounded to FP16 once, round-to-nearest-even (`round_fp16`). For a single FP16 add
  or multiply the FP32 intermediate makes that rounding the correctly rounded FP16 result
  (FP32 has 24 >= 2 * 11 + 2 bits, so double rounding is innocuous). Scaling an accumulator
  (`mul32`, FP32 x FP32, e.g. by 1/N) rounds to nearest even as well.
- Subnormals: FP16 subnormals are fully supported: as inputs (multiplier, converters, special
  functions) and as outputs (`round_fp16` and the special functions round onto the 2**-24 grid).
  FP32 subnormals are flushed to zero: an FP32 operand below 2**-126 in magnitude reads as a
  zero of its sign, and a result whose exact value is below 2**-126 becomes a zero of its
  sign. Data that starts as FP16 never meets this flush in `mul`, `add`, `tree_sum` and `dot`:
  every product and every partial sum is a multiple of 2**-48, so it is either zero or at
  least 2**-48 in magnitude.
- Overflow: rounding past the largest finite value gives Inf of the result's sign (FP16:
  magnitudes that round to 65520 or more; FP32 accumulation cannot overflow from FP16 data).
- Inf and NaN follow IEEE 754: Inf - Inf, 0 x Inf and NaN inputs give NaN. Every NaN a unit
  produces is the canonical quiet NaN, 0x7E00 (FP16) or 0x7FC00000 (FP32); payloads are not
  propagated. Zero signs follow IEEE round-to-nearest: x + (-x) = +0, (-0) + (-0) = -0, and
  a product's zero has the XOR of the signs.
- Special functions (`exp`, `reciprocal`, `rsqrt`, `gelu`): FP16 in, FP16 out, range
  reduction plus a 32- to 512-segment quadratic table evaluated in fixed point, one final
  rounding (see `hw.sfu`). Measured over every FP16 input, the error is below 0.52 ulp
  wherever the true result rounds to a normal FP16 number (the issue's bound is 2 ulp), and
  below 0.52 * 2**-24 where it falls below the normal range. Outside the normal range:
  exp(x) is a rounded subnormal for x <= -9.71, +0 for x <= -17.34 and -Inf, +Inf for
  x >= 11.09 and +Inf. reciprocal(x) is a rounded subnormal for |x| > 16384, +-Inf for
  |x| <= 2**-16 (zeros included), +-0 for +-Inf. rsqrt(x) is normal for every positive x;
  rsqrt(+0) = +Inf, rsqrt(-0) = -Inf, rsqrt(+Inf) = +0, NaN for x < 0. gelu(x) is a rounded
  subnormal for |x| < 2**-13 and for -5.29 < x <= -4.03, -0 for x <= -5.29 and -Inf, x itself
  for x >= 8 and +Inf, and keeps the sign of a zero. NaN in gives NaN out everywhere.

Units
-----
mul: `Fp16Multiplier`; mul32: `Fp32Multiplier`; add: `Fp32Adder`; round_fp16: `Fp32ToFp16`;
widen: `Fp16ToFp32`; tree_sum: `AdderTree`; dot, matvec: `DotLane`; reduce_sum: `SumLane`;
reduce_max: `MaxLane`; exp, reciprocal, rsqrt, gelu: `Exp`, `Reciprocal`, `Rsqrt`, `Gelu`.
vadd, vmul and vfma chain the same datapaths (`widen16`, `mul16`, `add32`, `round32to16`).

Vector widths
-------------
`width` is the number of elements a unit consumes per beat (W). It changes results: it fixes
the shape of the adder tree. Vectors whose length is not a multiple of `width` are padded at
the end with +0 in every operand (the compiler pads memory images the same way). Pipeline
latencies do not change results.
"""

from __future__ import annotations

import functools

import numpy as np

from hw import sfu
from hw.sfu import FP16_NAN_BITS

__all__ = [
    "DEFAULT_WIDTH",
    "FP16_NAN_BITS",
    "FP32_NAN_BITS",
    "add",
    "bits16",
    "bits32",
    "check_width",
    "dot",
    "exact_f64",
    "exp",
    "fp16_ulp_error",
    "from_bits16",
    "from_bits32",
    "gelu",
    "layernorm",
    "matvec",
    "mul",
    "mul32",
    "reciprocal",
    "reduce_max",
    "reduce_sum",
    "result_regions",
    "round_fp16",
    "rsqrt",
    "softmax",
    "tree_sum",
    "vadd",
    "vfma",
    "vmul",
    "widen",
]

#: Elements per beat of the dot-product lane and of the reductions unless told otherwise:
#: 16 FP16 values are one 256-bit HBM AXI beat.
DEFAULT_WIDTH = 16
#: The canonical quiet NaNs every unit produces (FP16's lives in `hw.sfu`, which needs it).
FP32_NAN_BITS = 0x7FC00000

_F32_MIN_NORMAL = np.float32(2.0**-126)


def _quiet(fn):
    """Run a unit model with numpy's floating-point warnings off: Inf, NaN and overflow are
    defined results here, not accidents."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return wrapper


# ----------------------------------------------------------------------------- bit views

def bits16(x) -> np.ndarray:
    """The uint16 bit patterns of FP16 values."""
    return np.asarray(x, np.float16).view(np.uint16)


def from_bits16(b) -> np.ndarray:
    """FP16 values from uint16 bit patterns."""
    return np.asarray(b, np.uint16).view(np.float16)


def bits32(x) -> np.ndarray:
    """The uint32 bit patterns of FP32 values."""
    return np.asarray(x, np.float32).view(np.uint32)


def from_bits32(b) -> np.ndarray:
    """FP32 values from uint32 bit patterns."""
    return np.asarray(b, np.uint32).view(np.float32)


@_quiet
def fp16_ulp_error(got16, exact) -> np.ndarray:
    """|got - exact| in units of the FP16 ulp at `exact` (2**(e - 10) for exact in
    [2**e, 2**(e + 1)), and 2**-24 below 2**-14); Inf where got is infinite and exact is not.
    A measuring stick for accuracy reports, not a unit."""
    got = _f16(got16, "got16").astype(np.float64)
    exact = np.asarray(exact, np.float64)
    binade = np.floor(np.log2(np.maximum(np.abs(exact), 2.0**-14)))
    err = np.abs(got - exact) / 2.0 ** (binade - 10)
    return np.where(np.isinf(got) & np.isfinite(exact), np.inf, err)


def exact_f64(name: str, x64) -> np.ndarray:
    """The float64 value of special function `name` (exp, reciprocal, rsqrt, gelu in GPT-2's
    tanh form): the reference accuracy is measured against."""
    x64 = np.asarray(x64, np.float64)
    with np.errstate(all="ignore"):
        if name == "exp":
            return np.exp(x64)
        if name == "reciprocal":
            return 1 / x64
        if name == "rsqrt":
            return 1 / np.sqrt(x64)
        if name == "gelu":
            return 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    raise ValueError(f"no float64 reference for {name!r}; use exp, reciprocal, rsqrt or gelu")


def result_regions(x16, exact) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of the finite inputs `x16` whose true results `exact` round to a normal FP16
    number, to a subnormal or zero, or overflow: the three regions accuracy is judged in."""
    exact = np.asarray(exact, np.float64)
    with np.errstate(all="ignore"):
        r16 = exact.astype(np.float16)
    finite = np.isfinite(np.asarray(x16, np.float64)) & np.isfinite(exact)
    normal = finite & np.isfinite(r16) & (np.abs(r16) >= 2.0**-14)
    tiny = finite & (np.abs(r16) < 2.0**-14)
    over = finite & np.isinf(r16)
    return normal, tiny, over


def _canon32(x: np.ndarray) -> np.ndarray:
    x = np.array(x, np.float32)  # a copy we may write to
    x.view(np.uint32)[np.isnan(x)] = FP32_NAN_BITS
    return x


def _canon16(x: np.ndarray) -> np.ndarray:
    x = np.array(x, np.float16)
    x.view(np.uint16)[np.isnan(x)] = FP16_NAN_BITS
    return x


def _ftz32(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < _F32_MIN_NORMAL, np.copysign(np.float32(0), x), x)


def _f16(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.float16:
        raise TypeError(f"{name} must be a float16 array, not {a.dtype}")
    return a


def _f32(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be a float32 array, not {a.dtype}")
    return a


def _wide(x, name: str) -> np.ndarray:
    """FP32 view of an operand that may be FP16 (widened exactly) or FP32 (flushed)."""
    a = np.asarray(x)
    if a.dtype == np.float16:
        return a.astype(np.float32)
    if a.dtype == np.float32:
        return _ftz32(a)
    raise TypeError(f"{name} must be a float16 or float32 array, not {a.dtype}")


def check_width(width: int) -> int:
    """`width` as an int: a vector width must be a power of two (TypeError/ValueError
    otherwise). The RTL units check their widths with this too."""
    if isinstance(width, bool) or not isinstance(width, int | np.integer):
        raise TypeError(f"width must be an integer, not {type(width).__name__}")
    if width < 1 or width & (width - 1):
        raise ValueError(f"width must be a power of two, not {width}")
    return int(width)


# ----------------------------------------------------------------------------- scalar units

@_quiet
def widen(x16) -> np.ndarray:
    """FP16 -> FP32, exact (subnormals are normalized). Unit: `Fp16ToFp32`."""
    return _canon32(_f16(x16, "x16").astype(np.float32))


@_quiet
def round_fp16(x32) -> np.ndarray:
    """FP32 -> FP16, round to nearest even, subnormal results, overflow to Inf. The FP32
    input is flushed first (FP32 subnormals are far below FP16's range: they round to zero
    either way). Unit: `Fp32ToFp16`."""
    return _canon16(_ftz32(_f32(x32, "x32")).astype(np.float16))


@_quiet
def mul(a16, b16) -> np.ndarray:
    """FP16 x FP16 -> FP32, exact. Unit: `Fp16Multiplier`."""
    a = _f16(a16, "a16").astype(np.float32)
    b = _f16(b16, "b16").astype(np.float32)
    return _canon32(a * b)


@_quiet
def add(a32, b32) -> np.ndarray:
    """FP32 + FP32 -> FP32, round to nearest even, subnormal operands and results flushed to
    zero of their sign. Unit: `Fp32Adder`."""
    a = _ftz32(_f32(a32, "a32"))
    b = _ftz32(_f32(b32, "b32"))
    # An exact sum below 2**-126 is always representable (both operands are multiples of
    # 2**-149), so flushing numpy's result flushes the exact value.
    return _canon32(_ftz32(a + b))


@_quiet
def mul32(a32, b32) -> np.ndarray:
    """FP32 x FP32 -> FP32, round to nearest even; operands below 2**-126 read as zero and a
    product whose exact value is below 2**-126 becomes zero (before rounding). Used to scale
    accumulators (e.g. by 1/N in `layernorm`). Unit: `Fp32Multiplier`."""
    a = _ftz32(_f32(a32, "a32")).astype(np.float64)
    b = _ftz32(_f32(b32, "b32")).astype(np.float64)
    p = a * b  # exact: 24 x 24 significand bits fit in float64's 53
    p = np.where(np.abs(p) < 2.0**-126, np.copysign(0.0, p), p)
    return _canon32(p.astype(np.float32))


# ----------------------------------------------------------------------------- trees and lanes

def _tree(x: np.ndarray, flush: bool) -> np.ndarray:
    """Pairwise sum over the last axis (a power of two): level by level, element 2j with
    2j + 1."""
    while x.shape[-1] > 1:
        x = x[..., 0::2] + x[..., 1::2]
        if flush:
            x = _ftz32(x)
    return x[..., 0]


@_quiet
def tree_sum(x32, axis: int = -1) -> np.ndarray:
    """Sum of a power-of-two number of FP32 values in the adder tree's fixed order: level 0
    adds elements (0, 1), (2, 3), ...; each next level adds neighbouring results the same way.
    Every addition is `add`. Unit: `AdderTree`."""
    x = np.moveaxis(_ftz32(_f32(x32, "x32")), axis, -1)
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"tree_sum needs a power-of-two length, not {n}")
    return _canon32(_tree(x, flush=True))


def _beats(x: np.ndarray, width: int) -> np.ndarray:
    """(..., N) -> (..., K, width), padding with +0 to a multiple of width."""
    n = x.shape[-1]
    if n == 0:
        raise ValueError("vector length must be at least 1, not 0")
    pad = -n % width
    if pad:
        x = np.concatenate([x, np.zeros((*x.shape[:-1], pad), x.dtype)], axis=-1)
    return x.reshape(*x.shape[:-1], -1, width)


def _accumulate(t: np.ndarray) -> np.ndarray:
    """Beat sums (..., K) -> row sums (...): ((t0 + t1) + t2) + ... in FP32."""
    t = np.moveaxis(t, -1, 0).copy()  # (K, ...): each beat contiguous
    acc = t[0]
    for k in range(1, t.shape[0]):
        acc = acc + t[k]
    return acc


def _lane(p: np.ndarray, width: int, flush: bool) -> np.ndarray:
    beats = _beats(p, width)  # (..., K, W)
    t = _tree(beats, flush)  # (..., K)
    acc = _accumulate(t)
    if flush:
        acc = _ftz32(acc)
    return _canon32(acc)


@_quiet
def dot(a16, b16, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """Dot products over the last axis, FP16 inputs, FP32 result, as the dot-product lane
    computes them: the vectors go `width` elements per beat (zero-padded); each beat's exact
    products are summed by `tree_sum`; a row's beat sums are added in order with `add`, the
    first beat sum starting the row. Broadcasts over leading axes. Unit: `DotLane`."""
    width = check_width(width)
    a = _f16(a16, "a16").astype(np.float32)
    b = _f16(b16, "b16").astype(np.float32)
    p = a * b
    # Products and partial sums of FP16 data are multiples of 2**-48, never FP32 subnormals,
    # so the flush is skipped here (tests check this path against the flushing one).
    return _lane(p, width, flush=False)


@_quiet
def matvec(w16, x16, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """y[..., r] = dot(w16[..., r, :], x16, width): (R, N) FP16 weights times an (N,) FP16
    vector, FP32 result (R,). Each row is one lane dot product (see `dot`)."""
    w = _f16(w16, "w16")
    x = _f16(x16, "x16")
    if w.ndim < 2:
        raise ValueError(f"w16 must have at least 2 dimensions (rows, N), not {w.ndim}")
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(
            f"x16 has {x.shape[-1]} elements but w16 rows have {w.shape[-1]}")
    return dot(w, x[..., None, :], width)


@_quiet
def reduce_sum(x, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """Sum over the last axis, FP16 (widened) or FP32 input, FP32 result, in the lane's order
    (per-beat tree, then beats in sequence). Equal to `dot(x, ones)` for FP16 x. Unit:
    `SumLane`."""
    width = check_width(width)
    return _lane(_wide(x, "x"), width, flush=True)


@_quiet
def reduce_max(x16, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """Maximum over the last axis, FP16 -> FP16, exact. Any NaN gives NaN; -0 counts as less
    than +0. With that total order the result does not depend on `width` or on the order of
    comparisons. Unit: `MaxLane`."""
    check_width(width)
    x = _f16(x16, "x16")
    if x.shape[-1] == 0:
        raise ValueError("vector length must be at least 1, not 0")
    b = bits16(x).astype(np.int32)
    # Order key: negatives below positives, larger magnitude further from the middle.
    key = np.where(b >> 15, 0x7FFF - (b & 0x7FFF), 0x8000 + (b & 0x7FFF))
    top = key.max(axis=-1)
    bits = np.where(top >= 0x8000, top - 0x8000, 0x8000 | (0x7FFF - top)).astype(np.uint16)
    bits = np.where(np.isnan(x).any(axis=-1), np.uint16(FP16_NAN_BITS), bits)
    return from_bits16(bits)


# ----------------------------------------------------------------------------- elementwise

@_quiet
def vadd(a, b) -> np.ndarray:
    """round_fp16(add(a, b)): operands FP16 (widened exactly) or FP32; result FP16. For FP16
    operands this is the correctly rounded FP16 sum."""
    return round_fp16(add(_wide(a, "a"), _wide(b, "b")))


@_quiet
def vmul(a16, b16) -> np.ndarray:
    """round_fp16(mul(a16, b16)): the correctly rounded FP16 product."""
    return round_fp16(mul(a16, b16))


@_quiet
def vfma(a16, b16, c) -> np.ndarray:
    """round_fp16(add(mul(a16, b16), c)): exact product, one FP32 addition, one FP16
    rounding; c is FP16 (widened) or FP32."""
    return round_fp16(add(mul(a16, b16), _wide(c, "c")))


# ----------------------------------------------------------------------------- special functions

@_quiet
def _sfu(fn, x16, name: str) -> np.ndarray:
    x = _f16(x16, name)
    return from_bits16(fn(bits16(x))).reshape(x.shape)


def exp(x16) -> np.ndarray:
    """e**x, FP16 -> FP16 (table: `hw.sfu`). Unit: `Exp`."""
    return _sfu(sfu.exp_bits, x16, "x16")


def reciprocal(x16) -> np.ndarray:
    """1/x, FP16 -> FP16. Unit: `Reciprocal`."""
    return _sfu(sfu.reciprocal_bits, x16, "x16")


def rsqrt(x16) -> np.ndarray:
    """1/sqrt(x), FP16 -> FP16. Unit: `Rsqrt`."""
    return _sfu(sfu.rsqrt_bits, x16, "x16")


def gelu(x16) -> np.ndarray:
    """x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x**3))), GPT-2's GELU, FP16 -> FP16.
    Unit: `Gelu`."""
    return _sfu(sfu.gelu_bits, x16, "x16")


# ----------------------------------------------------------------------------- compositions

@_quiet
def softmax(x16, width: int = DEFAULT_WIDTH, mask=None) -> np.ndarray:
    """Softmax over the last axis, FP16 -> FP16, as this exact sequence of unit operations
    (one instruction each; shapes (..., N) for vectors, (...) for scalars):

        xm = where(mask, x, -Inf)                 # masked positions (mask False) -> -Inf
        m  = reduce_max(xm, width)                # f16 scalar
        d  = vadd(xm, -m)                         # f16: round_fp16(add(widen(xm), widen(-m)))
        e  = exp(d)                               # f16, in [0, 1]
        s  = reduce_sum(e, width)                 # f32 scalar, >= 1
        r  = reciprocal(round_fp16(s))            # f16
        y  = vmul(e, r)                           # f16

    `-m` flips the sign bit. Masked positions give exactly +0; a row with every position
    masked gives NaN (as does any row holding NaN or +Inf).
    """
    x = _f16(x16, "x16")
    if mask is not None:
        x = np.where(np.asarray(mask, bool), x, np.float16(-np.inf))
    m = reduce_max(x, width)
    d = vadd(x, -m[..., None])
    e = exp(d)
    s = reduce_sum(e, width)
    r = reciprocal(round_fp16(s))
    return vmul(e, r[..., None])


@_quiet
def layernorm(x16, gamma16, beta16, eps: float = 1e-5, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """Layer normalization over the last axis (N elements), FP16 -> FP16, as this exact
    sequence of unit operations (vectors (..., N), scalars (...)):

        inv_n = float32(1 / N)                     # constant, rounded to nearest
        eps16 = float16(eps)                       # constant, rounded to nearest
        s1  = reduce_sum(x, width)                 # f32 scalar
        mu  = mul32(s1, inv_n)                     # f32 scalar: the mean
        d   = vadd(x, -mu)                         # f16: round_fp16(add(widen(x), -mu))
        s2  = dot(d, d, width)                     # f32 scalar: sum of exact squares
        var = mul32(s2, inv_n)                     # f32 scalar
        v   = vadd(var, eps16)                     # f16: round_fp16(add(var, widen(eps16)))
        r   = rsqrt(v)                             # f16
        n   = vmul(d, r)                           # f16
        y   = vfma(n, gamma, beta)                 # f16: round_fp16(add(mul(n, g), widen(b)))

    Limits: a variance of 65520 or more (standard deviation above ~256) rounds `v` to +Inf,
    so r = 0 and the output is beta.
    """
    x = _f16(x16, "x16")
    g = _f16(gamma16, "gamma16")
    b = _f16(beta16, "beta16")
    n = x.shape[-1]
    if n == 0:
        raise ValueError("vector length must be at least 1, not 0")
    if g.shape[-1] != n or b.shape[-1] != n:
        raise ValueError(
            f"gamma16 and beta16 must have {n} elements like x16, not "
            f"{g.shape[-1]} and {b.shape[-1]}")
    inv_n = np.float32(1.0 / n)
    eps16 = np.float16(eps)
    s1 = reduce_sum(x, width)
    mu = mul32(s1, inv_n)
    d = vadd(x, -mu[..., None])
    s2 = dot(d, d, width)
    var = mul32(s2, inv_n)
    v = vadd(var, eps16)
    r = rsqrt(v)
    nrm = vmul(d, r[..., None])
    return vfma(nrm, g, b)
