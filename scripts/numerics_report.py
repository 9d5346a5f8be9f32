"""Accuracy of the accelerator's numerics (`hw.numerics`).

    python scripts/numerics_report.py [--width 16] [--seed 0] [--json]

1. Each special function over every finite FP16 input, against float64 math, in FP16 ulps of
   the true value: where the true result rounds to a normal FP16 number, and separately (in
   units of 2**-24) where it falls below the normal range.
2. GPT-2-sized kernels on GPT-2-like activations against torch float32 fed the same FP16
   inputs, so only the accelerator's arithmetic is measured, not FP16 storage of the inputs.
   The activations are synthetic (seeded) with GPT-2's statistics: a residual stream of unit
   scale with per-channel spread and four outlier channels near +-40, layer-norm parameters
   near 1 and 0, weights N(0, 0.05) (768 -> 3072 -> 768), attention logits N(0, 2) over causal
   rows of 1 to 1024 positions. The kernels chain as in a GPT-2 block: layernorm -> matvec
   (c_fc) -> gelu -> matvec (c_proj).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from hw import numerics as nx

__all__ = ["kernel_errors", "special_function_errors"]


def _round16(x64: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return x64.astype(np.float16)


def special_function_errors() -> dict[str, dict]:
    """Per function: the normal-range ulp error, the error below the normal range, and
    whether every overflowing input gives Inf."""
    x = nx.from_bits16(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16))
    x64 = x.astype(np.float64)
    exact = {name: nx.exact_f64(name, x64) for name in ("exp", "reciprocal", "rsqrt", "gelu")}
    out = {}
    for name, y in exact.items():
        got = getattr(nx, name)(x)
        normal, tiny, over = nx.result_regions(x, y)
        ulps = nx.fp16_ulp_error(got[normal], y[normal])
        below = np.abs(got[tiny].astype(np.float64) - y[tiny]) / 2.0**-24
        out[name] = {
            "normal_inputs": int(normal.sum()),
            "max_ulp": float(ulps.max()),
            "mean_ulp": float(ulps.mean()),
            "correctly_rounded": float(np.mean(nx.bits16(got[normal])
                                                == nx.bits16(_round16(y[normal])))),
            "subnormal_or_zero_inputs": int(tiny.sum()),
            "max_error_in_2^-24": float(below.max()) if below.size else None,
            "overflow_inputs": int(over.sum()),
            "overflow_all_inf": bool(np.all(np.isinf(got[over]))),
        }
    return out


def _stats(got: np.ndarray, ref: torch.Tensor) -> dict[str, float]:
    """Error of FP16 (or FP32) results against a float32 reference."""
    ref64 = ref.double().numpy()
    got64 = got.astype(np.float64)
    diff = np.abs(got64 - ref64)
    scale = np.abs(ref64).max()
    out = {"max_abs": float(diff.max()), "max_abs_over_max_ref": float(diff.max() / scale)}
    if got.dtype == np.float16:
        big = np.abs(ref64) >= 2.0**-14
        ulps = nx.fp16_ulp_error(got[big], ref64[big])
        out |= {"median_ulp": float(np.median(ulps)), "p99_ulp": float(np.quantile(ulps, 0.99)),
                "max_ulp": float(ulps.max())}
    return out


def _f16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float16)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32))


def kernel_errors(width: int = nx.DEFAULT_WIDTH, seed: int = 0) -> dict[str, dict]:
    """Layernorm, matvec, gelu and softmax on GPT-2-like activations vs torch float32."""
    rng = np.random.default_rng(seed)
    tokens, d, hidden = 32, 768, 3072
    spread = np.exp(rng.normal(0.0, 0.4, d))
    x = rng.standard_normal((tokens, d)) * spread
    outliers = rng.choice(d, 4, replace=False)
    x[:, outliers] = rng.normal(40.0, 10.0, (tokens, 4)) * rng.choice([-1, 1], 4)
    x16 = _f16(x)
    gamma16 = _f16(rng.normal(1.0, 0.2, d))
    beta16 = _f16(rng.normal(0.0, 0.05, d))
    w_fc16 = _f16(rng.normal(0.0, 0.05, (hidden, d)))
    w_proj16 = _f16(rng.normal(0.0, 0.05, (d, hidden)))

    out: dict[str, dict] = {}
    ln = nx.layernorm(x16, gamma16, beta16, 1e-5, width)
    ref = torch.nn.functional.layer_norm(_t(x16), (d,), _t(gamma16), _t(beta16), 1e-5)
    out["layernorm"] = _stats(ln, ref)

    h32 = np.stack([nx.matvec(w_fc16, row, width) for row in ln])
    ref = _t(ln) @ _t(w_fc16).T
    out["matvec_fp32_accumulator"] = _stats(h32, ref)
    h16 = nx.round_fp16(h32)
    out["matvec_rounded_fp16"] = _stats(h16, ref)

    g = nx.gelu(h16)
    out["gelu"] = _stats(g, torch.nn.functional.gelu(_t(h16), approximate="tanh"))

    p32 = np.stack([nx.matvec(w_proj16, row, width) for row in g])
    out["matvec_c_proj_rounded_fp16"] = _stats(nx.round_fp16(p32), _t(g) @ _t(w_proj16).T)

    n = 1024
    logits16 = _f16(rng.normal(0.0, 2.0, (64, n)))
    lengths = rng.integers(1, n + 1, 64)
    mask = np.arange(n)[None, :] < lengths[:, None]
    sm = nx.softmax(logits16, width, mask)
    ref = torch.softmax(_t(logits16).masked_fill(torch.from_numpy(~mask), float("-inf")), -1)
    out["softmax"] = _stats(sm, ref)
    return out


def _table(title: str, rows: dict[str, dict]) -> str:
    keys = list(next(iter(rows.values())).keys())
    if any(set(r) != set(keys) for r in rows.values()):
        keys = sorted({k for r in rows.values() for k in r}, key=str)
    lines = [f"### {title}", "", "| | " + " | ".join(keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for name, r in rows.items():
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=nx.DEFAULT_WIDTH,
                        help=f"elements per beat of lanes and reductions "
                             f"(default {nx.DEFAULT_WIDTH})")
    parser.add_argument("--seed", type=int, default=0, help="activation seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    try:
        kernels = kernel_errors(args.width, args.seed)
    except (TypeError, ValueError) as err:
        print(f"numerics_report.py: {err}", file=sys.stderr)
        return 2
    report = {"special_functions": special_function_errors(), "kernels": kernels,
              "width": args.width, "seed": args.seed}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_table("Special functions, every finite FP16 input vs float64",
                     report["special_functions"]))
        print()
        print(_table(f"GPT-2-like kernels vs torch float32 (width {args.width})", kernels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
