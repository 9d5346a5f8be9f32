# amaranth: UnusedElaboratable=no
# (components are built here only to read their payload layouts; the build elaborates its own)
"""The arithmetic units under test: how to build each one, and its test cases with the outputs
`hw.numerics` predicts for them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data, wiring

from hw import numerics as nx
from rtl import arith

from . import vectors as vec

__all__ = ["LANE_WIDTHS", "UNITS", "Case", "UnitSpec", "pack"]

#: Vector widths the lanes and the tree are tested at (the model takes any power of two).
LANE_WIDTHS = {"adder_tree": 4, "sum_lane": 4, "dot_lane": 8, "max_lane": 8}


@dataclass(frozen=True)
class Case:
    """Input payload words, in order, and the output words the model predicts."""

    inputs: list[int]
    expected: list[int]


@dataclass(frozen=True)
class UnitSpec:
    name: str
    make: Callable[[], wiring.Component]
    #: (rng, number of random inputs, edges, full-rate schedule?) -> Case, where edges is
    #: "none", "edges" (the edge-case set) or "exhaustive" (every input, for FP16-input units)
    case: Callable[[np.random.Generator, int, str, bool], Case]


def _leaves(shape, offset: int, value, out: list) -> None:
    if isinstance(shape, data.StructLayout):
        for name, field in shape:
            _leaves(field.shape, offset + field.offset, value[name], out)
    elif isinstance(shape, data.ArrayLayout):
        elem_shape = shape.elem_shape
        elem = elem_shape.size if isinstance(elem_shape, data.Layout) \
            else Shape.cast(elem_shape).width
        for k in range(shape.length):
            _leaves(shape.elem_shape, offset + k * elem, value[:, k], out)
    else:
        out.append((offset, np.asarray(value)))


def pack(component: wiring.Component, fields) -> list[int]:
    """Input payload words of `component` from field arrays (a dict for struct layouts; arrays
    are (n, length))."""
    payload = component.i.payload
    shape = payload.shape() if isinstance(payload, data.View) else None
    leaves: list = []
    if shape is None:
        leaves.append((0, np.asarray(fields)))
    else:
        _leaves(shape, 0, fields, leaves)
    words = np.zeros(len(leaves[0][1]), dtype=object)
    for offset, values in leaves:
        words += np.asarray(values, np.uint64).astype(object) << offset
    return [int(w) for w in words]


def _pairs(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.meshgrid(edges, edges, indexing="ij")
    return a.ravel(), b.ravel()


def _binary(make, draw, edges, model, out_bits):
    def case(rng, n, edge_set, full_rate):
        a, b = draw(rng, n)
        if edge_set != "none":
            ea, eb = _pairs(edges)
            a, b = np.concatenate([ea, a]), np.concatenate([eb, b])
        unit = make()
        return Case(pack(unit, {"a": a, "b": b}), [int(v) for v in out_bits(model(a, b))])
    return case


_ALL_F16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def _unary(make, draw, edges, model, exhaustive=False):
    def case(rng, n, edge_set, full_rate):
        x = draw(rng, n)
        if edge_set == "exhaustive" and exhaustive:
            x = np.concatenate([_ALL_F16, x])
        elif edge_set != "none":
            x = np.concatenate([edges, x])
        return Case(pack(make(), x), [int(v) for v in model(x)])
    return case


def _f16_pairs(rng, n):
    return vec.f16_random(rng, n), vec.f16_random(rng, n)


def _f16_uniform(rng, n):
    return rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)


def _sfu(name, cls, fn):
    return UnitSpec(name, cls, _unary(
        cls, _f16_uniform, vec.F16_EDGES, lambda x: nx.bits16(fn(nx.from_bits16(x))),
        exhaustive=True))


# ----------------------------------------------------------------------------- lanes

def _lane_rows(rng, n_beats: int, full_rate: bool) -> list[int]:
    """Beat counts of the rows: short rows, and now and then a long accumulation."""
    lengths: list[int] = []
    total = 0
    while total < n_beats:
        k = 6 if full_rate else (int(rng.integers(150, 400)) if rng.random() < 0.01
                                 else int(rng.integers(1, 13)))
        k = min(k, max(n_beats - total, 1))
        lengths.append(k)
        total += k
    return lengths


def _lane_case(make, width, make_row, model, rng, n, edge_set, full_rate, edge_rows,
               interleave=True):
    """Rows of `width`-element beats, scheduled as a producer sends them; make_row(rng, k)
    returns a row's operands as a dict of (k * width,) arrays."""
    unit = make()
    lengths = _lane_rows(rng, n, full_rate)
    rows = [make_row(rng, k) for k in lengths]
    if edge_set != "none":
        extra = edge_rows(rng)
        rows = extra + rows
        lengths = [len(next(iter(r.values()))) // width for r in extra] + lengths
    if interleave:
        beats = vec.schedule_rows(rng, lengths, arith.SumLane.rows_in_flight, full_rate)
    else:  # one row after another
        beats = [vec.Beat(r, k, 0, k == 0, k == n_k - 1)
                 for r, n_k in enumerate(lengths) for k in range(n_k)]
    fields = {name: np.stack([rows[b.row][name][b.k * width:(b.k + 1) * width] for b in beats])
              for name in rows[0]}
    fields["first"] = np.array([b.first for b in beats], np.uint64)
    fields["last"] = np.array([b.last for b in beats], np.uint64)
    if interleave:
        fields["row"] = np.array([b.tag for b in beats], np.uint64)
    finished = [b.row for b in beats if b.last]  # results leave in this order
    return Case(pack(unit, fields), _row_results(rows, model, finished))


def _row_results(rows: list[dict], model, order: list[int]) -> list[int]:
    """model over every row, batched by row length (the model broadcasts over rows)."""
    by_length: dict[int, list[int]] = {}
    for r, row in enumerate(rows):
        by_length.setdefault(len(next(iter(row.values()))), []).append(r)
    results: dict[int, int] = {}
    for members in by_length.values():
        stacked = {name: np.stack([rows[r][name] for r in members]) for name in rows[0]}
        for r, value in zip(members, np.ravel(model(stacked)), strict=True):
            results[r] = int(value)
    return [results[r] for r in order]


def _sum_case(rng, n, edge_set, full_rate):
    width = LANE_WIDTHS["sum_lane"]

    def row(rng, k):
        return {"data": vec.f32_random(rng, k * width, spread=6.0)}

    def edges(rng):
        out = []
        for sprinkle in (vec.F32_EDGES, vec.F32_EDGES[:22]):  # with and without Inf/NaN
            for k in (1, 2, 5):
                x = vec.f32_random(rng, k * width, spread=6.0)
                pos = rng.integers(0, k * width, 3)
                x[pos] = rng.choice(sprinkle, 3)
                out.append({"data": x})
        for k in (2, 4, 6):  # the second half cancels the first exactly
            x = vec.f32_random(rng, k * width // 2, spread=6.0)
            out.append({"data": np.concatenate([x, x ^ np.uint32(0x80000000)])})
        out.append({"data": np.full(3 * width, 0x80000000, np.uint32)})  # all -0
        out.append({"data": vec.f32_random(rng, 600 * width, spread=3.0)})  # long accumulation
        return out

    def model(r):
        return nx.bits32(nx.reduce_sum(nx.from_bits32(r["data"]), width))

    return _lane_case(lambda: arith.SumLane(width), width, row, model, rng, n, edge_set,
                      full_rate, edges)


def _dot_case(rng, n, edge_set, full_rate):
    width = LANE_WIDTHS["dot_lane"]

    def weights(rng, m):
        return nx.bits16((rng.standard_normal(m) * 0.05).astype(np.float16))

    def row(rng, k):
        if rng.random() < 0.2:  # every class of operand, overflow products included
            return {"a": vec.f16_random(rng, k * width), "b": vec.f16_random(rng, k * width)}
        return {"a": weights(rng, k * width),
                "b": nx.bits16((rng.standard_normal(k * width) * 2).astype(np.float16))}

    def edges(rng):
        out = []
        for k in (1, 3):
            for _ in range(12):  # edge operands sprinkled into ordinary rows
                r = row(rng, k)
                pos = rng.integers(0, k * width, 4)
                r["a"][pos] = rng.choice(vec.F16_EDGES, 4)
                r["b"][rng.integers(0, k * width, 4)] = rng.choice(vec.F16_EDGES, 4)
                out.append(r)
        a = weights(rng, 4 * width)  # exact cancellation between beats
        out.append({"a": np.concatenate([a, a ^ np.uint16(0x8000)]),
                    "b": np.full(8 * width, 0x3C00, np.uint16)})
        out.append({"a": np.full(2 * width, 0x8000, np.uint16),  # -0 products give -0
                    "b": np.full(2 * width, 0x3C00, np.uint16)})
        out.append({"a": np.full(width, 0x7BFF, np.uint16),  # largest products, no overflow
                    "b": np.full(width, 0xFBFF, np.uint16)})
        out.append({"a": weights(rng, 700 * width),  # long accumulation
                    "b": nx.bits16(rng.standard_normal(700 * width).astype(np.float16))})
        return out

    def model(r):
        return nx.bits32(nx.dot(nx.from_bits16(r["a"]), nx.from_bits16(r["b"]), width))

    return _lane_case(lambda: arith.DotLane(width), width, row, model, rng, n, edge_set,
                      full_rate, edges)


def _max_case(rng, n, edge_set, full_rate):
    width = LANE_WIDTHS["max_lane"]

    def row(rng, k):
        return {"data": vec.f16_random(rng, k * width)}

    def edges(rng):
        out = [{"data": rng.choice(vec.F16_EDGES, k * width)} for k in (1, 1, 2, 3) * 8]
        out.append({"data": np.array([0x8000, 0x0000] * (width // 2), np.uint16)})  # -0 < +0
        out.append({"data": np.full(width, 0x8000, np.uint16)})
        out.append({"data": np.full(2 * width, 0xFC00, np.uint16)})
        return out

    def model(r):
        return nx.bits16(nx.reduce_max(nx.from_bits16(r["data"]), width))

    return _lane_case(lambda: arith.MaxLane(width), width, row, model, rng, n, edge_set,
                      full_rate, edges, interleave=False)


def _tree_case(rng, n, edge_set, full_rate):
    width = LANE_WIDTHS["adder_tree"]
    third = n // 3
    x = vec.f32_random(rng, n * width, spread=4.0).reshape(n, width)
    # cancelling pairs: element 2j + 1 is -(element 2j) give or take a few ulps
    c = x[:third].astype(np.int64)
    c[:, 1::2] = (c[:, 0::2] + rng.integers(-3, 4, (third, width // 2))) ^ (1 << 31)
    x[:third] = c.astype(np.uint32)
    if edge_set != "none":
        e = np.stack([rng.choice(vec.F32_EDGES, width) for _ in range(2000)])
        x = np.concatenate([e, x])
    expected = nx.bits32(nx.tree_sum(nx.from_bits32(x)))
    return Case(pack(arith.AdderTree(width), x), [int(v) for v in expected])


UNITS: dict[str, UnitSpec] = {spec.name: spec for spec in [
    UnitSpec("fp16_mul", arith.Fp16Multiplier, _binary(
        arith.Fp16Multiplier, _f16_pairs, vec.F16_EDGES,
        lambda a, b: nx.mul(nx.from_bits16(a), nx.from_bits16(b)), nx.bits32)),
    UnitSpec("fp32_mul", arith.Fp32Multiplier, _binary(
        arith.Fp32Multiplier, vec.mul32_operands, vec.F32_EDGES,
        lambda a, b: nx.mul32(nx.from_bits32(a), nx.from_bits32(b)), nx.bits32)),
    UnitSpec("fp32_add", arith.Fp32Adder, _binary(
        arith.Fp32Adder, vec.add_operands, vec.F32_EDGES,
        lambda a, b: nx.add(nx.from_bits32(a), nx.from_bits32(b)), nx.bits32)),
    UnitSpec("fp32_to_fp16", arith.Fp32ToFp16, _unary(
        arith.Fp32ToFp16, vec.round_operands, vec.F32_EDGES,
        lambda x: nx.bits16(nx.round_fp16(nx.from_bits32(x))))),
    UnitSpec("fp16_to_fp32", arith.Fp16ToFp32, _unary(
        arith.Fp16ToFp32, _f16_uniform, vec.F16_EDGES,
        lambda x: nx.bits32(nx.widen(nx.from_bits16(x))), exhaustive=True)),
    UnitSpec("adder_tree", lambda: arith.AdderTree(LANE_WIDTHS["adder_tree"]), _tree_case),
    UnitSpec("sum_lane", lambda: arith.SumLane(LANE_WIDTHS["sum_lane"]), _sum_case),
    UnitSpec("dot_lane", lambda: arith.DotLane(LANE_WIDTHS["dot_lane"]), _dot_case),
    UnitSpec("max_lane", lambda: arith.MaxLane(LANE_WIDTHS["max_lane"]), _max_case),
    _sfu("exp", arith.Exp, nx.exp),
    _sfu("reciprocal", arith.Reciprocal, nx.reciprocal),
    _sfu("rsqrt", arith.Rsqrt, nx.rsqrt),
    _sfu("gelu", arith.Gelu, nx.gelu),
]}
