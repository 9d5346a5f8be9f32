"""`hw.numerics` scalar units against references computed another way: exact rationals
rounded by hand, float64, and numpy's own float16 arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from hw import numerics as nx

F32_MIN = Fraction(2) ** -126


def _f32_of(q: Fraction) -> np.float32:
    """An exact rational rounded to FP32 as the units define it: flush if |q| < 2**-126
    (before rounding), round to nearest even, overflow to Inf."""
    if q == 0:
        return np.float32(0.0)
    sign = -1 if q < 0 else 1
    a = abs(q)
    if a < F32_MIN:
        return np.float32(sign * 0.0)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    scaled = a / Fraction(2) ** (e - 23)  # in [2**23, 2**24)
    n, rem = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * rem
    if twice > scaled.denominator or (twice == scaled.denominator and n % 2 == 1):
        n += 1
    value = Fraction(n) * Fraction(2) ** (e - 23)
    if value >= Fraction(2) ** 128:
        return np.float32(sign * np.inf)
    return np.float32(sign * float(value))


def _f16_of(q: Fraction) -> np.float16:
    """An exact rational rounded to FP16: nearest even on the 2**-24 grid below 2**-14,
    Inf from 65520 up."""
    if q == 0:
        return np.float16(0.0)
    sign = -1 if q < 0 else 1
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, -14)
    scaled = a / Fraction(2) ** (e - 10)
    n, rem = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * rem
    if twice > scaled.denominator or (twice == scaled.denominator and n % 2 == 1):
        n += 1
    value = Fraction(n) * Fraction(2) ** (e - 10)
    if value >= 65520:
        return np.float16(sign * np.inf)
    return np.float16(sign * float(value))


def _f32_operands(rng, n):
    """FP32 bit patterns: random, close opposite pairs, ties, the flush boundary, the top."""
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    exp = rng.integers(0, 255, n).astype(np.uint32)
    frac = rng.integers(0, 1 << 23, n).astype(np.uint32)
    sign = rng.integers(0, 2, n).astype(np.uint32)
    shaped = (sign << 31) | (exp << 23) | frac
    small = (sign << 31) | (rng.integers(0, 4, n).astype(np.uint32) << 23) | frac
    return np.where(rng.random(n) < 0.3, bits, np.where(rng.random(n) < 0.5, shaped, small))


def _finite(x):
    return np.isfinite(x)


def test_mul_is_the_exact_product():
    rng = np.random.default_rng(0)
    a = nx.from_bits16(rng.integers(0, 1 << 16, 20000).astype(np.uint16))
    b = nx.from_bits16(rng.integers(0, 1 << 16, 20000).astype(np.uint16))
    p = nx.mul(a, b)
    ok = _finite(a) & _finite(b)
    exact = a[ok].astype(np.float64) * b[ok].astype(np.float64)
    np.testing.assert_array_equal(p[ok].astype(np.float64), exact)
    assert np.array_equal(np.signbit(p[ok]), np.signbit(a[ok]) ^ np.signbit(b[ok]))


def test_mul_specials_give_the_canonical_nan_and_signed_inf():
    inf, nan = np.float16(np.inf), np.float16(np.nan)
    out = nx.bits32(nx.mul(np.array([inf, 0, nan, -inf, inf], np.float16),
                           np.array([0, -inf, 1, 2, -3], np.float16)))
    assert list(out) == [nx.FP32_NAN_BITS, nx.FP32_NAN_BITS, nx.FP32_NAN_BITS, 0xFF800000,
                         0xFF800000]


def test_add_rounds_the_exact_sum_once():
    rng = np.random.default_rng(1)
    a = nx.from_bits32(_f32_operands(rng, 3000))
    b = nx.from_bits32(_f32_operands(rng, 3000))
    # half the pairs nearly cancel: b = -a give or take a few ulps
    near = (nx.bits32(a).astype(np.int64) + rng.integers(-5, 6, 3000)) ^ (1 << 31)
    b = np.where(rng.random(3000) < 0.5, nx.from_bits32(near.astype(np.uint32)), b)
    s = nx.add(a, b)
    for x, y, got in zip(a, b, s, strict=True):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        fx = Fraction(0) if abs(x) < 2.0**-126 else Fraction(float(x))
        fy = Fraction(0) if abs(y) < 2.0**-126 else Fraction(float(y))
        want = _f32_of(fx + fy)
        if fx + fy == 0:  # exact cancellation is +0; two zeros keep a shared sign
            want = np.float32(-0.0) if (fx == 0 and fy == 0 and np.signbit(x)
                                        and np.signbit(y)) else np.float32(0.0)
        assert nx.bits32(got) == nx.bits32(want), (x, y, got, want)


def test_add_flushes_subnormal_operands_and_results():
    tiny = nx.from_bits32(np.array([0x00000001, 0x807FFFFF], np.uint32))
    one = np.float32(1.0)
    assert nx.add(tiny[:1], np.array([one]))[0] == one
    assert nx.bits32(nx.add(tiny[1:], np.array([np.float32(-0.0)])))[0] == 0x80000000
    # 1.5 * 2**-126 - 2**-126 = 2**-127 is below the normal range: flushed
    a = np.array([np.float32(1.5 * 2.0**-126)])
    b = np.array([np.float32(-(2.0**-126))])
    assert nx.bits32(nx.add(a, b))[0] == 0


def test_mul32_rounds_the_exact_product_once():
    rng = np.random.default_rng(2)
    a = nx.from_bits32(_f32_operands(rng, 3000))
    b = nx.from_bits32(_f32_operands(rng, 3000))
    p = nx.mul32(a, b)
    for x, y, got in zip(a, b, p, strict=True):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        fx = Fraction(0) if abs(x) < 2.0**-126 else Fraction(float(x))
        fy = Fraction(0) if abs(y) < 2.0**-126 else Fraction(float(y))
        want = _f32_of(fx * fy)
        if fx * fy == 0:
            want = np.float32(-0.0) if np.signbit(x) != np.signbit(y) else np.float32(0.0)
        assert nx.bits32(got) == nx.bits32(want), (x, y, got, want)


def test_round_fp16_rounds_to_nearest_even_with_subnormals():
    rng = np.random.default_rng(3)
    n = 4000
    exp = rng.integers(127 - 30, 127 + 18, n).astype(np.uint32)
    frac = rng.integers(0, 1 << 23, n).astype(np.uint32)
    ties = rng.random(n) < 0.5  # bits below FP16's last place exactly 100..0
    drop = 13 + np.clip(-14 - (exp.astype(np.int64) - 127), 0, 11)
    frac = np.where(ties, (frac >> drop << drop) | (1 << (drop - 1)), frac).astype(np.uint32)
    x = nx.from_bits32((rng.integers(0, 2, n).astype(np.uint32) << 31) | (exp << 23) | frac)
    got = nx.round_fp16(x)
    for v, g in zip(x, got, strict=True):
        assert nx.bits16(g) == nx.bits16(_f16_of(Fraction(float(v)))), (v, g)


def test_widen_then_round_is_the_identity_on_every_fp16():
    x = nx.from_bits16(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16))
    back = nx.bits16(nx.round_fp16(nx.widen(x)))
    keep = ~np.isnan(x)
    np.testing.assert_array_equal(back[keep], nx.bits16(x)[keep])
    assert np.all(back[~keep] == nx.FP16_NAN_BITS)
    assert np.all(nx.bits32(nx.widen(x))[~keep] == nx.FP32_NAN_BITS)


def test_vadd_and_vmul_are_correctly_rounded_fp16_arithmetic():
    rng = np.random.default_rng(4)
    a = nx.from_bits16(rng.integers(0, 1 << 16, 50000).astype(np.uint16))
    b = nx.from_bits16(rng.integers(0, 1 << 16, 50000).astype(np.uint16))
    with np.errstate(all="ignore"):
        want_sum, want_prod = a + b, a * b  # numpy's float16 arithmetic
    for got, want in ((nx.vadd(a, b), want_sum), (nx.vmul(a, b), want_prod)):
        keep = ~np.isnan(want)
        np.testing.assert_array_equal(nx.bits16(got)[keep], nx.bits16(want)[keep])
        assert np.all(nx.bits16(got)[~keep] == nx.FP16_NAN_BITS)


def test_vfma_rounds_an_exact_product_plus_c():
    a = np.array([3.0, 1e-3, -2.0], np.float16)
    b = np.array([7.0, 1e-3, 0.5], np.float16)
    c = np.array([1.0, 1.0, 1.0], np.float16)
    got = nx.vfma(a, b, c)
    want = nx.round_fp16(nx.add(nx.mul(a, b), nx.widen(c)))
    np.testing.assert_array_equal(nx.bits16(got), nx.bits16(want))
    assert got[0] == np.float16(22.0)


@pytest.mark.parametrize(("fn", "arg", "message"), [
    (nx.mul, np.float32(1), "a16 must be a float16 array, not float32"),
    (nx.add, np.float16(1), "a32 must be a float32 array, not float16"),
    (nx.round_fp16, np.float64(1), "x32 must be a float32 array, not float64"),
])
def test_units_reject_the_wrong_format(fn, arg, message):
    other = np.float16(1) if fn is nx.mul else np.float32(1)
    args = (arg, other) if fn is not nx.round_fp16 else (arg,)
    with pytest.raises(TypeError, match=message):
        fn(*args)
