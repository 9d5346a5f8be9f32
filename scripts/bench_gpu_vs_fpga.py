"""GPU against FPGA on DFX's workloads: (32|64|128 input) x (1|16|256 output) tokens.

    python scripts/bench_gpu_vs_fpga.py --out build/bench

For GPT-2 345M, 774M and 1.5B (XL) and gpt2-1.5b-24h (1536 wide, 24 heads) it writes
`DIR/results.json`, `DIR/table.md`,
`DIR/latency_<model>.png` (latency against output length) and `DIR/roofline.png` (decode on a
roofline), with these columns:

- **GPU, measured**: the golden model (random weights of the right shape; latency does not
  depend on the values) in torch eager, and compiled with torch.compile, with the KV cache, on
  CUDA in FP16. Without a GPU it measures on the CPU in FP32 and labels the column so; there a
  full 256-token decode of a 1.5B model takes minutes, so decode steps are timed at a few
  positions (--decode-samples) and the rest interpolated linearly in the position. Each figure
  is the median of --repeats runs after a warm-up.
- **FPGA, projected**: the compiled program on U280 x {1, 2, 4} through the timing model
  (`tandem perf`): prefill and decode on the FPGAs. Full-size FPGA figures are projections of
  the timing model, never measurements.
- **Heterogeneous, measured + projected**: the GPU's prefill of the first I-1 prompt tokens
  (measured), the KV cache's transfer to the cards over PCIe (--pcie-gbps, per card, in
  parallel; projected), then the FPGAs process the last prompt token and decode (projected).
- **DFX, published**: 1.5B on 4 U280 (scripts/data/dfx_latency.csv).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from host.compiler import CompileError, ModelShape
from host.runtime.kv import PCIE_GBPS
from host.runtime.projection import MODEL_SHAPES, project
from hw.config import PRESETS
from models import GPT2Config, GPT2LMHead

INPUTS = (32, 64, 128)
OUTPUTS = (1, 16, 256)
DEVICES = (1, 2, 4)
DFX_CSV = Path(__file__).parent / "data" / "dfx_latency.csv"


def dfx_reference() -> dict[tuple[int, int], float]:
    rows = DFX_CSV.read_text().splitlines()[1:]
    out = {}
    for row in rows:
        _, _, _, i, o, ms, _ = row.split(",", 6)
        out[(int(i), int(o))] = float(ms)
    return out


# -- the GPU (or CPU) column ------------------------------------------------------------------


def build_model(shape: ModelShape, device: str, dtype: torch.dtype) -> GPT2LMHead:
    config = GPT2Config(vocab_size=shape.vocab_size, n_positions=shape.n_positions,
                        n_embd=shape.n_embd, n_layer=shape.n_layer, n_head=shape.n_head,
                        n_inner=shape.n_inner)
    with torch.device("meta"):
        model = GPT2LMHead(config)
    model = model.to_empty(device=device).to(dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=generator)
    model.lm_head.weight = model.transformer.wte.weight
    return model.eval()


class Timer:
    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def __call__(self, fn):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3, out


class GpuColumn:
    """Prefill and decode latencies of one model on this machine's torch device."""

    def __init__(self, model, device: str, repeats: int, decode_samples: int,
                 forward=None) -> None:
        self.model = model
        self.forward = forward or model
        self.timer = Timer(device)
        self.device = device
        self.repeats = repeats
        self.decode_samples = decode_samples
        self._prefill: dict[int, float] = {}
        self._decode: dict[int, float] = {}

    def _ids(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device).remainder(1000).unsqueeze(0)

    @torch.no_grad()
    def prefill_ms(self, n: int) -> float:
        if n not in self._prefill:
            ids = self._ids(n)
            self.timer(lambda: self.forward(ids))  # warm-up
            self._prefill[n] = statistics.median(
                self.timer(lambda: self.forward(ids))[0] for _ in range(self.repeats))
        return self._prefill[n]

    @torch.no_grad()
    def decode_step_ms(self, position: int) -> float:
        """One decode step with `position` tokens already in the KV cache."""
        if position not in self._decode:
            _, (_, past) = self.timer(lambda: self.forward(self._ids(position)))
            token = self._ids(1)
            self.timer(lambda: self.forward(token, past))  # warm-up
            self._decode[position] = statistics.median(
                self.timer(lambda: self.forward(token, past))[0] for _ in range(self.repeats))
        return self._decode[position]

    def decode_ms(self, start: int, steps: int) -> float:
        """Sum of `steps` decode steps from position `start` on."""
        if steps <= 0:
            return 0.0
        if self.decode_samples <= 0 or steps <= self.decode_samples:
            return sum(self.decode_step_ms(start + k) for k in range(steps))
        picks = sorted({start + round(k * (steps - 1) / (self.decode_samples - 1))
                        for k in range(self.decode_samples)})
        times = [self.decode_step_ms(p) for p in picks]
        total = 0.0
        for k in range(steps):  # linear interpolation between the sampled positions
            p = start + k
            j = max(i for i, q in enumerate(picks) if q <= p)
            if j == len(picks) - 1:
                total += times[j]
            else:
                frac = (p - picks[j]) / (picks[j + 1] - picks[j])
                total += times[j] + frac * (times[j + 1] - times[j])
        return total

    def latency_ms(self, n_in: int, n_out: int) -> float:
        """Prompt, then n_out tokens: the first from the prefill's logits."""
        return self.prefill_ms(n_in) + self.decode_ms(n_in, n_out - 1)


# -- the benchmark ----------------------------------------------------------------------------


def kv_bytes(shape: ModelShape, positions: int) -> int:
    return 2 * shape.n_layer * positions * shape.n_embd * 2  # K and V, FP16


def run(args) -> dict:
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    gpu_name = torch.cuda.get_device_name() if device == "cuda" else \
        f"CPU ({torch.get_num_threads()} threads; no GPU on this machine)"
    samples = 0 if device == "cuda" else args.decode_samples
    dfx = dfx_reference()
    results = {"device": device, "gpu": gpu_name, "dtype": str(dtype).removeprefix("torch."),
               "decode": "every step measured" if samples == 0 else
               f"{samples} positions measured per run, the rest interpolated",
               "pcie_gbps": args.pcie_gbps, "fpga_config": args.config, "models": {}}
    workloads = [(i, o) for i in INPUTS for o in OUTPUTS]
    for name in args.models:
        shape = MODEL_SHAPES[name]
        model = build_model(shape, device, dtype)
        variants = {"eager": GpuColumn(model, device, args.repeats, samples)}
        if device == "cuda" and not args.no_compile:
            compiled = torch.compile(model, dynamic=True)
            variants["compiled"] = GpuColumn(model, device, args.repeats, samples, compiled)
        entry = {"shape": asdict(shape), "params": shape.weight_bytes_fp16() // 2,
                 "workloads": []}
        for n_in, n_out in tqdm(workloads, desc=name, unit="workload"):
            row = {"input": n_in, "output": n_out, "gpu_ms": {}, "fpga_ms": {},
                   "hetero_ms": {}, "fpga_decode_ms_per_token": {}, "notes": []}
            for label, column in variants.items():
                row["gpu_ms"][label] = column.latency_ms(n_in, n_out)
            gpu_prefill = variants["eager"].prefill_ms(n_in - 1)
            for d in DEVICES:
                config = PRESETS[args.config].with_devices(d)
                try:
                    full = project(shape, config, n_in, n_out)
                    tail = project(shape, config, n_in, n_out, pos0=n_in - 1)
                except CompileError as e:
                    row["notes"].append(f"{d} device(s): {e}")
                    continue
                row["fpga_ms"][d] = full["total_ms"]
                row["fpga_decode_ms_per_token"][d] = full["ms_per_token"]
                transfer = kv_bytes(shape, n_in - 1) / d / (args.pcie_gbps * 1e6)
                row["hetero_ms"][d] = gpu_prefill + transfer + tail["total_ms"]
            row["dfx_ms"] = dfx.get((n_in, n_out)) if name == "gpt2-1.5b" else None
            entry["workloads"].append(row)
        entry["gpu_decode_ms_per_token"] = variants["eager"].decode_step_ms(64)
        results["models"][name] = entry
        del model, variants
    return results


# -- reports ----------------------------------------------------------------------------------


def _fmt(x) -> str:
    return "-" if x is None else f"{x:,.1f}"


def write_table(results: dict, out: Path) -> str:
    where = "GPU" if results["device"] == "cuda" else "CPU"
    lines = [
        f"Latency in ms of (input, output) tokens. {where}: {results['gpu']}, "
        f"{results['dtype']}, measured (decode: {results['decode']}). FPGA: "
        f"{results['fpga_config']} x D, **projected** by the timing model. Heterogeneous: "
        f"{where} prefill (measured) + PCIe at {results['pcie_gbps']} GB/s per card + FPGA "
        "(projected). DFX: published, 4 x U280.",
        "",
    ]
    compiled = any("compiled" in r["gpu_ms"] for m in results["models"].values()
                   for r in m["workloads"])
    head = ["model", "in", "out", f"{where} eager"] + ([f"{where} compiled"] if compiled else [])
    head += [f"FPGA x{d}" for d in DEVICES] + [f"{where} + FPGA x{d}" for d in DEVICES] + ["DFX"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in results["models"].items():
        for r in entry["workloads"]:
            cells = [name, str(r["input"]), str(r["output"]), _fmt(r["gpu_ms"]["eager"])]
            if compiled:
                cells.append(_fmt(r["gpu_ms"].get("compiled")))
            cells += [_fmt(r["fpga_ms"].get(d)) for d in DEVICES]
            cells += [_fmt(r["hetero_ms"].get(d)) for d in DEVICES]
            cells.append(_fmt(r["dfx_ms"]))
            lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({n for m in results["models"].values() for r in m["workloads"]
                    for n in r["notes"]})
    if notes:
        lines += ["", "Not mappable: " + "; ".join(notes) + "."]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where = "GPU" if results["device"] == "cuda" else "CPU"
    written = []
    for name, entry in results["models"].items():
        fig, axes = plt.subplots(1, len(INPUTS), figsize=(4.2 * len(INPUTS), 3.8), sharey=True)
        for ax, n_in in zip(axes, INPUTS, strict=True):
            rows = [r for r in entry["workloads"] if r["input"] == n_in]
            xs = [r["output"] for r in rows]

            def line(values, label, style, xs=xs, ax=ax):
                pts = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, label=label)

            line([r["gpu_ms"]["eager"] for r in rows], f"{where} eager (measured)", "k-o")
            for d in DEVICES:
                line([r["fpga_ms"].get(d) for r in rows], f"FPGA x{d} (projected)", "-s")
            line([r["hetero_ms"].get(4) for r in rows], f"{where} prefill + FPGA x4", "--^")
            line([r["dfx_ms"] for r in rows], "DFX x4 (published)", "r:D")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{name}, {n_in} input tokens", fontsize=10)
            ax.set_xlabel("output tokens")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("latency (ms)")
        axes[-1].legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        path = out / f"latency_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    # decode roofline: FLOP/s against operational intensity, batch 1
    config = PRESETS[results["fpga_config"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    intensity = [0.25, 64]
    for d in DEVICES:
        bw = config.hbm_peak_gbps * d  # GB/s
        peak = 2 * config.mpu_lanes * config.lane_width * config.clock_mhz * 1e6 * d / 1e9
        xs = [intensity[0], peak / bw, intensity[1]]  # the ridge point between the roofs
        ax.plot(xs, [min(bw * i, peak) for i in xs], "-", alpha=0.6,
                label=f"U280 x{d} roof ({bw:.0f} GB/s, {peak:,.0f} GFLOP/s)")
    for name, entry in results["models"].items():
        flop = 2 * entry["params"]
        weight_bytes = 2 * entry["params"]
        mid = next(r for r in entry["workloads"] if r["input"] == 64 and r["output"] == 256)
        for d in DEVICES:
            ms = mid["fpga_decode_ms_per_token"].get(d)
            if ms:
                ax.plot(flop / weight_bytes, flop / ms / 1e6, "o", label=f"{name} FPGA x{d}")
        ax.plot(flop / weight_bytes, flop / entry["gpu_decode_ms_per_token"] / 1e6, "kx",
                label=f"{name} {where} (measured)")
        if name == "gpt2-1.5b":
            ax.plot(flop / weight_bytes, flop / 6.9 / 1e6, "rD",
                    label="GPT-2 1.5B on DFX (published)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (FLOP per weight byte)")
    ax.set_ylabel("GFLOP/s in decode (batch 1)")
    ax.set_title("Decode roofline: FPGA projected, DFX published", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = out / "roofline.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for results, table and plots")
    parser.add_argument("--models", nargs="+", default=list(MODEL_SHAPES),
                        choices=list(MODEL_SHAPES))
    parser.add_argument("--config", default="u280", choices=("u280", "u55c"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--decode-samples", type=int, default=3,
                        help="CPU only: decode positions timed per run (0: every step)")
    parser.add_argument("--pcie-gbps", type=float, default=PCIE_GBPS,
                        help="host-to-card bandwidth per card (PCIe Gen3 x16 in practice)")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even with CUDA")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(write_table(results, out))
    for path in plot(results, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
