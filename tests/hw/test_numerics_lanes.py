"""Adder tree, lanes and reductions of `hw.numerics`: the documented order of operations, the
padding rule, parameter checks, accuracy against float64, speed."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from hw import numerics as nx


def _tree_by_hand(x: np.ndarray) -> np.float32:
    level = list(x)
    while len(level) > 1:
        level = [nx.add(np.float32(level[j]), np.float32(level[j + 1]))
                 for j in range(0, len(level), 2)]
    return np.float32(level[0])


def test_tree_sum_adds_neighbours_level_by_level():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((200, 16)) * np.exp(rng.uniform(-20, 20, (200, 16)))).astype(
        np.float32)
    got = nx.tree_sum(x)
    for row, g in zip(x, got, strict=True):
        assert nx.bits32(g) == nx.bits32(_tree_by_hand(row))


def test_tree_order_is_visible_in_the_result():
    x = np.array([1e8, 1.0, -1e8, 1.0], np.float32)
    # pairwise: (1e8 + 1) + (-1e8 + 1) = 1e8 + -1e8 = 0; left to right would give 1
    assert nx.tree_sum(x) == 0.0
    assert (((x[0] + x[1]) + x[2]) + x[3]) == 1.0


def _dot_by_hand(a: np.ndarray, b: np.ndarray, width: int) -> np.float32:
    pad = -len(a) % width
    a = np.concatenate([a, np.zeros(pad, np.float16)])
    b = np.concatenate([b, np.zeros(pad, np.float16)])
    beats = [_tree_by_hand(nx.mul(a[k:k + width], b[k:k + width]))
             for k in range(0, len(a), width)]
    acc = beats[0]
    for t in beats[1:]:
        acc = nx.add(np.float32(acc), np.float32(t))
    return np.float32(acc)


@pytest.mark.parametrize(("n", "width"), [(64, 8), (50, 8), (7, 16), (96, 32), (5, 1)])
def test_dot_is_its_documented_sequence_of_unit_operations(n, width):
    rng = np.random.default_rng(n)
    a = (rng.standard_normal((6, n)) * 3).astype(np.float16)
    b = (rng.standard_normal((6, n)) * 0.05).astype(np.float16)
    got = nx.dot(a, b, width)
    for ra, rb, g in zip(a, b, got, strict=True):
        assert nx.bits32(g) == nx.bits32(_dot_by_hand(ra, rb, width))


def test_dot_without_the_flush_equals_the_flushing_lane():
    """dot skips the FP32 flush (products of FP16 are never FP32 subnormal); reduce_sum of
    the same exact products flushes at every step and must agree, specials included."""
    rng = np.random.default_rng(1)
    a = nx.from_bits16(rng.integers(0, 1 << 16, (300, 40)).astype(np.uint16))
    b = nx.from_bits16(rng.integers(0, 1 << 16, (300, 40)).astype(np.uint16))
    tiny = nx.from_bits16(rng.integers(0, 1 << 10, (300, 40)).astype(np.uint16))  # subnormal
    for lhs, rhs in ((a, b), (tiny, tiny), (tiny, a)):
        np.testing.assert_array_equal(nx.bits32(nx.dot(lhs, rhs, 8)),
                                      nx.bits32(nx.reduce_sum(nx.mul(lhs, rhs), 8)))


def test_matvec_is_a_dot_per_row_and_accurate():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((96, 768)) * 0.02).astype(np.float16)
    x = rng.standard_normal(768).astype(np.float16)
    y = nx.matvec(w, x, 16)
    np.testing.assert_array_equal(nx.bits32(y), nx.bits32(nx.dot(w, x[None, :], 16)))
    exact = w.astype(np.float64) @ x.astype(np.float64)
    bound = 768 * 2.0**-24 * (np.abs(w).astype(np.float64) @ np.abs(x).astype(np.float64))
    assert np.all(np.abs(y - exact) <= bound)


def test_reduce_sum_of_fp16_is_a_dot_with_ones():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((50, 100)) * 100).astype(np.float16)
    ones = np.ones_like(x)
    np.testing.assert_array_equal(nx.bits32(nx.reduce_sum(x, 16)),
                                  nx.bits32(nx.dot(x, ones, 16)))


def test_reduce_max_orders_signed_zeros_and_lets_nan_win():
    x = np.array([[-0.0, 0.0], [0.0, -0.0], [-0.0, -0.0], [-np.inf, -1.0],
                  [1.0, np.nan], [np.inf, 65504]], np.float16)
    got = nx.bits16(nx.reduce_max(x, 2))
    assert list(got) == [0x0000, 0x0000, 0x8000, 0xBC00, nx.FP16_NAN_BITS, 0x7C00]
    rng = np.random.default_rng(4)
    y = (rng.standard_normal((40, 77)) * 1e3).astype(np.float16)
    np.testing.assert_array_equal(nx.reduce_max(y, 4), y.max(axis=-1))
    np.testing.assert_array_equal(nx.reduce_max(y, 4), nx.reduce_max(y, 64))


@pytest.mark.parametrize("width", [0, 6, -4, 12])
def test_width_must_be_a_power_of_two(width):
    x = np.ones(8, np.float16)
    for call in (lambda: nx.dot(x, x, width), lambda: nx.reduce_sum(x, width),
                 lambda: nx.reduce_max(x, width), lambda: nx.softmax(x, width)):
        with pytest.raises(ValueError, match=f"width must be a power of two, not {width}"):
            call()


def test_shape_errors_name_the_problem():
    w = np.ones((4, 8), np.float16)
    with pytest.raises(ValueError, match="x16 has 6 elements but w16 rows have 8"):
        nx.matvec(w, np.ones(6, np.float16))
    with pytest.raises(ValueError, match="tree_sum needs a power-of-two length, not 3"):
        nx.tree_sum(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="vector length must be at least 1, not 0"):
        nx.reduce_sum(np.ones(0, np.float16))


def test_matvec_of_a_large_layer_is_fast():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((1024, 4096)) * 0.02).astype(np.float16)
    x = rng.standard_normal(4096).astype(np.float16)
    nx.matvec(w, x, 32)
    start = time.perf_counter()
    nx.matvec(w, x, 32)
    assert time.perf_counter() - start < 1.0  # ~25 ms on the reference machine


def test_numerics_imports_only_numpy():
    code = ("import sys, hw.numerics; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'rtl', 'sim', 'host', 'models', 'amaranth', 'cocotb'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
