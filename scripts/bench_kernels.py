"""The Triton kernels of `gpu_kernels` against what a user would otherwise call, on one GPU.

    python scripts/bench_kernels.py --out build/bench_kernels [--quick] [--dtype bf16]

| kernel | baseline |
|---|---|
| flash_attention fwd+bwd (causal) | `F.scaled_dot_product_attention`, flash backend |
| layer_norm fwd+bwd | eager `F.layer_norm` |
| bias_gelu fwd+bwd | eager `F.gelu(x + b, approximate="tanh")` |
| cross_entropy (LM head + loss) fwd+bwd | `F.cross_entropy` on the full FP32 logits |
| dropless MoE FFN (permute, grouped_gemm x2, GELU, unpermute) fwd+bwd | a loop over experts |

Each row gives the median time (`triton.testing.do_bench`), the throughput (TFLOPS of the
op's model FLOPs for matmul-bound ops, GB/s of the minimum traffic for the memory-bound ones),
the peak memory the op allocated above what was live before it, and the ratios baseline / ours
(time: > 1 means ours is faster; memory: > 1 means ours needs less). It also trains a GPT-2
124M-shaped model (12 x 768, 12 heads, vocabulary 50257, 1024 positions) for a few steps with
kernels="torch" and kernels="triton" under BF16 autocast, and reports tokens/s.

It writes DIR/kernels.json, DIR/kernels.md (the table) and DIR/kernels.png (time ratios).
Without CUDA it says so and exits 0 without measuring anything: figures from a CPU (or from
Triton's interpreter) say nothing about a GPU and are never shown as GPU figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

NO_CUDA = ("bench_kernels needs CUDA (torch.cuda.is_available() is False): no figures measured. "
           "Run it on a machine with an NVIDIA GPU.")
NO_TRITON = "bench_kernels needs triton (pip install '.[triton]'): no figures measured."

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Row:
    kernel: str
    shape: str
    ours_ms: float
    base_ms: float
    unit: str  # "TFLOPS" or "GB/s"
    ours_rate: float
    base_rate: float
    ours_peak_mib: float
    base_peak_mib: float

    @property
    def speedup(self) -> float:
        return self.base_ms / self.ours_ms

    @property
    def memory_ratio(self) -> float:
        return self.base_peak_mib / max(self.ours_peak_mib, 1e-9)


# -- measuring ---------------------------------------------------------------------------------


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(median ms, peak MiB allocated above the live memory before the call) of fn on CUDA."""
    from triton.testing import do_bench

    fn()  # compile / warm up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    ms = do_bench(fn, warmup=10, rep=50, return_mode="median")
    return ms, peak


def _fwd_bwd(fn, inputs):
    """A closure running fn(*inputs) forward and backward (grads cleared each time)."""
    def run():
        for t in inputs:
            t.grad = None
        out = fn(*inputs)
        out.backward(torch.ones_like(out) if out.dim() else None)
    return run


def _leaves(*ts):
    return [t.detach().requires_grad_(True) for t in ts]


def bench_attention(dtype, quick: bool) -> list[Row]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gpu_kernels import flash_attention

    rows = []
    lengths = (1024, 2048) if quick else (1024, 2048, 4096)
    for D, H in ((64, 16), (128, 8)):
        for T in lengths:
            B = max(1, 16384 // T)
            q, k, v = _leaves(*(torch.randn(B, H, T, D, device="cuda", dtype=dtype)
                                for _ in range(3)))

            def sdpa(q, k, v):
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            ours = measure(_fwd_bwd(lambda q, k, v: flash_attention(q, k, v), (q, k, v)))
            base = measure(_fwd_bwd(sdpa, (q, k, v)))
            flops = 3.5 * 4 * B * H * T * T * D / 2  # causal fwd (2 matmuls) + bwd (2.5x fwd)
            rows.append(_row("flash_attention", f"B{B} H{H} T{T} D{D}", ours, base,
                             "TFLOPS", flops / 1e12))
    return rows


def bench_layer_norm(dtype, quick: bool) -> list[Row]:
    from gpu_kernels import layer_norm

    rows = []
    for M, N in ((8192, 768), (8192, 1600)) if not quick else ((8192, 768),):
        x, w, b = _leaves(torch.randn(M, N, device="cuda", dtype=dtype),
                          torch.ones(N, device="cuda", dtype=dtype),
                          torch.zeros(N, device="cuda", dtype=dtype))
        ours = measure(_fwd_bwd(lambda x, w, b: layer_norm(x, w, b), (x, w, b)))
        base = measure(_fwd_bwd(lambda x, w, b, N=N: F.layer_norm(x, (N,), w, b), (x, w, b)))
        traffic = 5 * M * N * x.element_size()  # fwd: read x, write y; bwd: read x, dy, write dx
        rows.append(_row("layer_norm", f"{M}x{N}", ours, base, "GB/s", traffic / 1e9))
    return rows


def bench_bias_gelu(dtype, quick: bool) -> list[Row]:
    from gpu_kernels import bias_gelu

    M, N = (8192, 3072)
    x, b = _leaves(torch.randn(M, N, device="cuda", dtype=dtype),
                   torch.randn(N, device="cuda", dtype=dtype))
    ours = measure(_fwd_bwd(lambda x, b: bias_gelu(x, b), (x, b)))
    base = measure(_fwd_bwd(lambda x, b: F.gelu(x + b, approximate="tanh"), (x, b)))
    traffic = 5 * M * N * x.element_size()  # fwd: read x, write y; bwd: read x, dy, write dx
    return [_row("bias_gelu", f"{M}x{N}", ours, base, "GB/s", traffic / 1e9)]


def bench_cross_entropy(dtype, quick: bool) -> list[Row]:
    from gpu_kernels import cross_entropy

    N, C, V = (4096 if quick else 8192), 768, 50257
    h, w = _leaves(torch.randn(N, C, device="cuda", dtype=dtype),
                   0.02 * torch.randn(V, C, device="cuda", dtype=dtype))
    t = torch.randint(0, V, (N,), device="cuda")
    ours = measure(_fwd_bwd(lambda h, w: cross_entropy(h, w, t), (h, w)))
    base = measure(_fwd_bwd(lambda h, w: F.cross_entropy((h @ w.t()).float(), t), (h, w)))
    flops = 6 * N * C * V  # logits, dhidden, dweight (ours recomputes the logits: 8 N C V)
    return [_row("cross_entropy", f"N{N} C{C} V{V}", ours, base, "TFLOPS", flops / 1e12)]


def bench_moe(dtype, quick: bool) -> list[Row]:
    from gpu_kernels import (
        bias_gelu,
        grouped_gemm,
        grouped_gemm_reference,
        permute,
        permute_reference,
        unpermute,
        unpermute_reference,
    )

    rows = []
    S, M, inner, K = 8192, 768, 3072, 2
    for E in (8,) if quick else (8, 16, 32):
        g = torch.Generator(device="cuda").manual_seed(0)
        expert = torch.rand(S, E, device="cuda", generator=g).topk(K, dim=1).indices
        x, gate, w1, b1, w2, b2 = _leaves(
            torch.randn(S, M, device="cuda", dtype=dtype),
            torch.rand(S, K, device="cuda", dtype=dtype),
            torch.randn(E, M, inner, device="cuda", dtype=dtype) / M**0.5,
            torch.zeros(E, inner, device="cuda", dtype=dtype),
            torch.randn(E, inner, M, device="cuda", dtype=dtype) / inner**0.5,
            torch.zeros(E, M, device="cuda", dtype=dtype))

        def dropless(x, gate, w1, b1, w2, b2, expert=expert, E=E):
            xs, sizes, order = permute(x, expert, E)
            h = bias_gelu(grouped_gemm(xs, w1, sizes, b1))
            return unpermute(grouped_gemm(h, w2, sizes, b2), order, gate)

        def loop(x, gate, w1, b1, w2, b2, expert=expert, E=E):
            xs, sizes, order = permute_reference(x, expert, E)
            h = F.gelu(grouped_gemm_reference(xs, w1, sizes, b1), approximate="tanh")
            return unpermute_reference(grouped_gemm_reference(h, w2, sizes, b2), order, gate)

        inputs = (x, gate, w1, b1, w2, b2)
        ours = measure(_fwd_bwd(dropless, inputs))
        base = measure(_fwd_bwd(loop, inputs))
        flops = 3 * 2 * (2 * S * K * M * inner)  # two GEMMs over S*K rows, fwd + 2 bwd
        rows.append(_row("moe_dropless", f"S{S} k{K} E{E} {M}->{inner}", ours, base, "TFLOPS",
                         flops / 1e12))
    return rows


def _row(kernel, shape, ours, base, unit, work) -> Row:
    """work: TFLOP or GB per call, turned into a rate with each time."""
    (o_ms, o_peak), (b_ms, b_peak) = ours, base
    return Row(kernel, shape, o_ms, b_ms, unit, work / (o_ms / 1e3), work / (b_ms / 1e3),
               o_peak, b_peak)


# -- GPT-2 124M training tokens/s ---------------------------------------------------------------


def bench_training(quick: bool) -> dict[str, float]:
    from models import GPT2Config, GPT2LMHead

    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    B, T = (4, 1024) if quick else (8, 1024)
    steps = 5 if quick else 20
    out = {}
    for kernels in ("torch", "triton"):
        torch.manual_seed(0)
        model = GPT2LMHead(config, kernels=kernels).cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        ids = torch.randint(0, config.vocab_size, (B, T + 1), device="cuda")

        def step(model=model, opt=opt, ids=ids):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model.lm_loss(ids[:, :-1], ids[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        out[kernels] = B * T * steps / (time.perf_counter() - start)
        del model, opt
        torch.cuda.empty_cache()
    return out


# -- reporting ----------------------------------------------------------------------------------


def markdown(rows: list[Row], training: dict[str, float] | None, device: str, dtype: str) -> str:
    lines = [f"Measured on {device}, {dtype}, forward + backward. Ratios are baseline / ours: "
             "time > 1 means ours is faster, memory > 1 means ours needs less.", "",
             "| kernel | shape | ours ms | baseline ms | time ratio | ours rate | baseline rate "
             "| ours peak MiB | baseline peak MiB | memory ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.kernel} | {r.shape} | {r.ours_ms:.3f} | {r.base_ms:.3f} | "
                     f"{r.speedup:.2f}x | {r.ours_rate:.1f} {r.unit} | {r.base_rate:.1f} {r.unit} "
                     f"| {r.ours_peak_mib:.0f} | {r.base_peak_mib:.0f} | {r.memory_ratio:.2f}x |")
    if training:
        t, f = training["torch"], training["triton"]
        lines += ["", "GPT-2 124M-shaped training (BF16 autocast, AdamW), tokens/s: "
                  f"torch {t:,.0f}, triton {f:,.0f} ({f / t:.2f}x)."]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    labels = [f"{r.kernel}\n{r.shape}" for r in rows]
    ax.barh(range(len(rows)), [r.speedup for r in rows], color="tab:blue")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("baseline time / ours (> 1: the Triton kernel is faster)")
    ax.set_title(f"gpu_kernels vs the usual torch calls, fwd+bwd, measured on {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


BENCHES = {"attention": bench_attention, "layer_norm": bench_layer_norm,
           "bias_gelu": bench_bias_gelu, "cross_entropy": bench_cross_entropy,
           "moe": bench_moe}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/bench_kernels"))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter training")
    parser.add_argument("--only", choices=sorted(BENCHES), action="append",
                        help="run only these kernel benchmarks (repeatable)")
    parser.add_argument("--no-training", action="store_true",
                        help="skip the GPT-2 124M tokens/s comparison")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    if importlib.util.find_spec("triton") is None:
        print(NO_TRITON)
        return 0
    from gpu_kernels import INTERPRETER
    if INTERPRETER:
        print("bench_kernels: unset TRITON_INTERPRET; interpreter timings are not GPU timings",
              file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    device = torch.cuda.get_device_name()
    rows: list[Row] = []
    for name in args.only or list(BENCHES):
        print(f"benchmarking {name} ...", flush=True)
        rows += BENCHES[name](dtype, args.quick)
    training = None if args.no_training else bench_training(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, training, device, args.dtype)
    (args.out / "kernels.md").write_text(table)
    (args.out / "kernels.json").write_text(json.dumps(
        {"device": device, "dtype": args.dtype, "rows": [asdict(r) for r in rows],
         "training_tokens_per_s": training}, indent=2))
    plot(rows, args.out / "kernels.png", device)
    print(table)
    print(f"wrote {args.out / 'kernels.md'}, kernels.json, kernels.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
