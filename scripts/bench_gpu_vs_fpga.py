"""GPU against FPGA on DFX's workloads: (32|64|128 input) x (1|16|256 output) tokens.

    python scripts/bench_gpu_vs_fpga.py --out build/bench

For GPT-2 345M, 774M and 1.5B (XL) and gpt2-1.5b-24h (1536 wide, 24 heads; --models picks a
subset) it writes `DIR/results.json`, `DIR/table.md`, `DIR/latency_<model>.png` (latency
against output length) and `DIR/roofline.png` (decode on a roofline), with these columns:

- **GPU, measured**: the golden model (random weights of the right shape; latency does not
  depend on the values) in torch eager, and compiled with torch.compile, with the KV cache, on
  CUDA in FP16. Without a GPU it measures on the CPU in FP32 and labels the column so; there a
  full 256-token decode of a 1.5B model takes minutes, so decode steps are timed at a few
  positions (--decode-samples) and the rest interpolated linearly in the position. Each figure
  is the median of --repeats runs after a warm-up.
- **FPGA, projected**: the compiled program on U280 x {1, 2, 4} through the timing model
  (`tandem perf`): prefill and decode on the FPGAs. Full-size FPGA figures are projections of
  the timing model, never measurements, and each is projected three times, with every
  assumption of `hw.config.ASSUMPTIONS` (clock, HBM efficiency, ring hop, PCIe) at its
  pessimistic, central and optimistic value: the table gives the central figure with the
  [pessimistic-optimistic] range, the plots draw the band.
- **Heterogeneous, measured + projected**: the GPU's prefill of the first I-1 prompt tokens
  (measured), the KV cache's transfer to the cards over PCIe (per card, in parallel, at the
  corner's `pcie_gbps` unless --pcie-gbps fixes it; projected), then the FPGAs process the last
  prompt token and decode (projected, at the same corner).
- **DFX, published**: 1.5B on 4 U280 (scripts/data/dfx_latency.csv), compared with the real
  GPT-2 XL (`gpt2-1.5b`); points, not a band: DFX measured them.

results.json, table.md and the plots are rewritten after each model, so an interrupted run
keeps the models it finished; --from-results redraws table.md and the plots from a results.json
without measuring or projecting anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from host.compiler import CompileError, ModelShape
from host.runtime.projection import MODEL_SHAPES, project
from hw.config import ASSUMPTIONS, CORNERS, PRESETS, at_corner
from models import GPT2Config, GPT2LMHead

INPUTS = (32, 64, 128)
OUTPUTS = (1, 16, 256)
DEVICES = (1, 2, 4)
#: The workload the roofline plot and the decode table read (DFX's headline case).
REFERENCE = (64, 256)
DFX_MODEL = "gpt2-1.5b"  # the model DFX's published figures are compared with
DFX_DECODE_MS = 6.9  # DFX's measured GPT-2 1.5B decode on 4 U280, ms/token
DFX_CSV = Path(__file__).parent / "data" / "dfx_latency.csv"
# the order a band is written in: central, then the range from the pessimistic end
BAND_ORDER = ("central", "pessimistic", "optimistic")
assert set(BAND_ORDER) == set(CORNERS)


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


# -- the FPGA columns: every figure at the three corners ---------------------------------------

#: What each projection keeps (the rest of `project`'s answer is per-token detail).
_KEEP = ("total_ms", "prefill_ms", "ms_per_token", "hbm_utilization", "roofline_fraction")


def _project_corner(task: tuple) -> tuple:
    """One projection: (name, devices, corner, input, output, pos0) -> (task, figures or the
    compiler's refusal). Top-level so a process pool can run it."""
    name, devices, corner, n_in, n_out, pos0, config_name = task
    config = at_corner(PRESETS[config_name].with_devices(devices), corner)
    try:
        result = project(MODEL_SHAPES[name], config, n_in, n_out, pos0=pos0)
    except CompileError as e:
        return task, f"{devices} device(s): {e}"
    return task, {k: result.get(k) for k in _KEEP}


def project_model(name: str, config_name: str, workloads, jobs: int) -> dict:
    """Every (workload, device count, corner) of one model, all-FPGA (pos0 = 0) and the
    heterogeneous tail (pos0 = I-1), keyed by task; `jobs` > 1 runs them in a process pool."""
    tasks = [(name, d, corner, n_in, n_out, pos0, config_name)
             for n_in, n_out in workloads for d in DEVICES for corner in CORNERS
             for pos0 in (0, n_in - 1)]
    progress = tqdm(total=len(tasks), desc=f"{name} FPGA projections", unit="run")
    out = {}
    if jobs > 1:
        # fork: the workers inherit the imported toolchain instead of importing it again
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            for task, result in pool.map(_project_corner, tasks):
                out[task] = result
                progress.update()
    else:
        for task in tasks:
            out[task] = _project_corner(task)[1]
            progress.update()
    progress.close()
    return out


def sensitivity(name: str, config_name: str, entry: dict, pcie_fixed: float | None) -> dict:
    """How far one model's reference figure moves when one assumption moves alone.

    On the most devices that map, at the reference workload: each accelerator assumption is
    set to each end of its range with the others at their central values (an end equal to
    the central value is left out). PCIe enters only the heterogeneous figure, through the
    KV cache's transfer time, so its row gives that."""
    row = reference_row(entry)
    devices = max(row["fpga_ms"])
    n_in, n_out = row["input"], row["output"]
    shape = MODEL_SHAPES[name]
    base = at_corner(PRESETS[config_name].with_devices(devices), "central")
    keep = ("ms_per_token", "total_ms")
    central = {k: row[f][devices]["central"] for k, f in
               (("ms_per_token", "fpga_decode_ms_per_token"), ("total_ms", "fpga_ms"))}
    moves = []
    for a in ASSUMPTIONS.values():
        for end in ("pessimistic", "optimistic"):
            value = a.value(end)
            if value == a.central:
                continue
            move = {"assumption": a.name, "unit": a.unit, "central": a.central, "corner": end,
                    "value": value}
            if a.field:
                result = project(shape, dataclasses.replace(base, **{a.field: value}), n_in,
                                 n_out)
                move.update({k: result[k] for k in keep})
                move["change"] = result["total_ms"] / central["total_ms"] - 1
            elif not pcie_fixed:  # the host link: the heterogeneous run's KV transfer
                size = kv_bytes(shape, n_in - 1) / devices
                move["kv_transfer_ms"] = size / (value * 1e6)
                move["kv_transfer_ms_central"] = size / (a.central * 1e6)
            else:
                continue
            moves.append(move)
    return {"model": name, "devices": devices, "input": n_in, "output": n_out,
            "central": central, "moves": moves}


def pcie_gbps(args, corner: str) -> float:
    """Host-to-card GB/s per card at `corner`, unless --pcie-gbps fixes one value."""
    return args.pcie_gbps or ASSUMPTIONS["pcie_gbps"].value(corner)


# -- the benchmark ----------------------------------------------------------------------------


def kv_bytes(shape: ModelShape, positions: int) -> int:
    return 2 * shape.n_layer * positions * shape.n_embd * 2  # K and V, FP16


def _assumptions() -> dict:
    return {a.name: {"unit": a.unit, **{c: a.value(c) for c in CORNERS}, "source": a.source}
            for a in ASSUMPTIONS.values()}


def measure_model(name: str, args, device: str, dtype, samples: int, workloads, dfx) -> dict:
    """One model's entry: the measured host column, and the projected FPGA and heterogeneous
    columns, each of those a {devices: {corner: ms}} band."""
    shape = MODEL_SHAPES[name]
    projected = project_model(name, args.config, workloads, args.jobs)
    model = build_model(shape, device, dtype)
    variants = {"eager": GpuColumn(model, device, args.repeats, samples)}
    if device == "cuda" and not args.no_compile:
        compiled = torch.compile(model, dynamic=True)
        variants["compiled"] = GpuColumn(model, device, args.repeats, samples, compiled)
    entry = {"shape": asdict(shape), "params": shape.weight_bytes_fp16() // 2, "workloads": []}
    for n_in, n_out in tqdm(workloads, desc=f"{name} {device} measurements", unit="workload"):
        row = {"input": n_in, "output": n_out, "gpu_ms": {}, "gpu_prefill_ms": None,
               "fpga_ms": {}, "fpga_prefill_ms": {}, "fpga_decode_ms_per_token": {},
               "fpga_hbm_utilization": {}, "fpga_roofline_fraction": {},
               "hetero_ms": {}, "hetero_fpga_ms": {}, "kv_transfer_ms": {}, "notes": []}
        for label, column in variants.items():
            row["gpu_ms"][label] = column.latency_ms(n_in, n_out)
        row["gpu_prefill_ms"] = host_prefill = variants["eager"].prefill_ms(n_in - 1)
        for d in DEVICES:
            fulls = {c: projected[(name, d, c, n_in, n_out, 0, args.config)] for c in CORNERS}
            tails = {c: projected[(name, d, c, n_in, n_out, n_in - 1, args.config)]
                     for c in CORNERS}
            refusal = next((r for r in (*fulls.values(), *tails.values())
                            if isinstance(r, str)), None)
            if refusal:
                row["notes"].append(refusal)
                continue
            for key, field in (("fpga_ms", "total_ms"), ("fpga_prefill_ms", "prefill_ms"),
                               ("fpga_decode_ms_per_token", "ms_per_token"),
                               ("fpga_hbm_utilization", "hbm_utilization"),
                               ("fpga_roofline_fraction", "roofline_fraction")):
                row[key][d] = {c: fulls[c][field] for c in BAND_ORDER}
            row["kv_transfer_ms"][d] = {
                c: kv_bytes(shape, n_in - 1) / d / (pcie_gbps(args, c) * 1e6) for c in BAND_ORDER}
            row["hetero_fpga_ms"][d] = {c: tails[c]["total_ms"] for c in BAND_ORDER}
            row["hetero_ms"][d] = {c: host_prefill + row["kv_transfer_ms"][d][c]
                                   + tails[c]["total_ms"] for c in BAND_ORDER}
        row["dfx_ms"] = dfx.get((n_in, n_out)) if name == DFX_MODEL else None
        entry["workloads"].append(row)
    # one decode step at the reference workload's prompt length, for the roofline
    entry["gpu_decode_ms_per_token"] = variants["eager"].decode_step_ms(
        reference_row(entry)["input"])
    del model, variants
    return entry


def run(args, argv, on_model=None) -> dict:
    """Measure and project every model of --models; `on_model(results)` after each one."""
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    gpu_name = torch.cuda.get_device_name() if device == "cuda" else \
        f"CPU ({torch.get_num_threads()} threads; no GPU on this machine)"
    samples = 0 if device == "cuda" else args.decode_samples
    results = {
        "label": "GPU/CPU columns measured on this machine; FPGA and heterogeneous columns "
                 "projected by the timing model (hw/perf.py) at three corners of the "
                 "assumptions; DFX published",
        "command": "python scripts/bench_gpu_vs_fpga.py " + shlex.join(argv),
        "device": device, "gpu": gpu_name, "dtype": str(dtype).removeprefix("torch."),
        "decode": "every step measured" if samples == 0 else
        f"{samples} positions measured per run, the rest interpolated",
        "repeats": args.repeats,
        "pcie_gbps": args.pcie_gbps or "per corner (assumption pcie_gbps)",
        "fpga_config": args.config, "corners": list(BAND_ORDER), "assumptions": _assumptions(),
        "models_requested": list(args.models), "models": {}}
    workloads = [(i, o) for i in args.inputs for o in args.outputs]
    dfx = dfx_reference()
    t0 = time.monotonic()
    for name in args.models:
        results["models"][name] = measure_model(name, args, device, dtype, samples, workloads,
                                                dfx)
        if "sensitivity" not in results and reference_row(results["models"][name])["fpga_ms"]:
            results["sensitivity"] = sensitivity(name, args.config, results["models"][name],
                                                 args.pcie_gbps)
        results["elapsed_s"] = round(time.monotonic() - t0, 1)
        if on_model:
            on_model(results)
    return results


# -- reports ----------------------------------------------------------------------------------


def _fmt(x) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _band(band: dict | None, fmt=_fmt) -> str:
    """central [pessimistic-optimistic], or '-'."""
    if not band:
        return "-"
    return f"{fmt(band['central'])} [{fmt(band['pessimistic'])}–{fmt(band['optimistic'])}]"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def reference_row(entry: dict) -> dict:
    """The workload the decode table and the roofline read: REFERENCE if it was run, else the
    last one (the longest)."""
    rows = entry["workloads"]
    return next((r for r in rows if (r["input"], r["output"]) == REFERENCE), rows[-1])


def _assumption_line(results: dict) -> str:
    parts = []
    for name, a in results["assumptions"].items():
        parts.append(f"{name} {a['central']:g} [{a['pessimistic']:g}–{a['optimistic']:g}] "
                     f"{a['unit']}")
    return "; ".join(parts)


def _sensitivity_table(sens: dict) -> list[str]:
    c = sens["central"]
    lines = [f"One assumption at a time: {sens['model']} on {sens['devices']} device(s), "
             f"({sens['input']} in, {sens['output']} out), the others at their central values "
             f"(central: {c['ms_per_token']:.3f} ms/token, {_fmt(c['total_ms'])} ms in all):",
             "", "| assumption | central | moved to | decode ms/token | total ms | change |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in sens["moves"]:
        head = (f"| {m['assumption']} | {m['central']:g} {m['unit']} "
                f"| {m['value']:g} ({m['corner']})")
        if "total_ms" in m:
            lines.append(f"{head} | {m['ms_per_token']:.3f} | {_fmt(m['total_ms'])} "
                         f"| {100 * m['change']:+.1f}% |")
        else:
            lines.append(f"{head} | - | - | heterogeneous only: KV transfer "
                         f"{m['kv_transfer_ms_central']:.2f} -> {m['kv_transfer_ms']:.2f} ms |")
    return lines


def write_table(results: dict, out: Path) -> str:
    where = "GPU" if results["device"] == "cuda" else "CPU"
    pcie = results["pcie_gbps"]
    pcie = f"{pcie} GB/s per card" if isinstance(pcie, float) else \
        "the corner's pcie_gbps per card"
    done = list(results["models"])
    missing = [m for m in results.get("models_requested", done) if m not in done]
    lines = [
        f"Generated by `{results['command']}`"
        + (f"; stopped after {', '.join(done)} (not run: {', '.join(missing)})." if missing
           else "."),
        "",
        f"Latency in ms of (input, output) tokens. {where}: {results['gpu']}, "
        f"{results['dtype']}, **measured** (median of {results['repeats']}; decode: "
        f"{results['decode']}). FPGA: {results['fpga_config']} x D, **projected** by the "
        "timing model, each cell the central case with the [pessimistic–optimistic] range, "
        "every assumption at that corner at once. Heterogeneous: "
        f"{where} prefill of I-1 tokens (measured) + the KV cache over PCIe at {pcie} "
        "(projected) + the FPGAs' last prompt token and decode (projected), same corners. "
        "DFX: published, measured on 4 x U280.",
        "",
        f"Assumptions, central [pessimistic–optimistic]: {_assumption_line(results)} "
        "(sources: hw/config.py, ASSUMPTIONS).",
        "",
    ]
    compiled = any("compiled" in r["gpu_ms"] for m in results["models"].values()
                   for r in m["workloads"])
    head = ["model", "in", "out", f"{where} eager"] + ([f"{where} compiled"] if compiled else [])
    head += [f"FPGA x{d}" for d in DEVICES] + [f"{where} + FPGA x{d}" for d in DEVICES]
    head += ["DFX x4"]
    lines += ["| " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * (len(head) - 3)]
    for name, entry in results["models"].items():
        for r in entry["workloads"]:
            cells = [name, str(r["input"]), str(r["output"]), _fmt(r["gpu_ms"]["eager"])]
            if compiled:
                cells.append(_fmt(r["gpu_ms"].get("compiled")))
            cells += [_band(r["fpga_ms"].get(d)) for d in DEVICES]
            cells += [_band(r["hetero_ms"].get(d)) for d in DEVICES]
            cells.append(_fmt(r["dfx_ms"]))
            lines.append("| " + " | ".join(cells) + " |")
    first = reference_row(next(iter(results["models"].values())))
    lines += ["", f"Decode on the FPGAs at ({first['input']} in, {first['output']} out), "
              "projected, central "
              "[pessimistic–optimistic]:", "",
              "| model | devices | ms/token | HBM utilization | share of the weight roofline "
              "| FPGA part of the heterogeneous run (ms) |", "|---|---:|---:|---:|---:|---:|"]
    for name, entry in results["models"].items():
        r = reference_row(entry)
        for d in DEVICES:
            if d not in r["fpga_ms"] or not r["fpga_decode_ms_per_token"][d]["central"]:
                continue
            lines.append(
                f"| {name} | {d} | {_band(r['fpga_decode_ms_per_token'][d], '{:.3f}'.format)} "
                f"| {_band(r['fpga_hbm_utilization'][d], _pct)} "
                f"| {_band(r['fpga_roofline_fraction'][d], _pct)} "
                f"| {_band(r['hetero_fpga_ms'][d])} |")
    if "sensitivity" in results:
        lines += ["", *_sensitivity_table(results["sensitivity"])]
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
    colors = {d: f"C{k}" for k, d in enumerate(DEVICES)}
    written = []
    for name, entry in results["models"].items():
        inputs = sorted({r["input"] for r in entry["workloads"]})
        fig, axes = plt.subplots(1, len(inputs), figsize=(4.2 * len(inputs), 4.4), sharey=True,
                                 squeeze=False)
        axes = axes[0]
        for ax, n_in in zip(axes, inputs, strict=True):
            rows = [r for r in entry["workloads"] if r["input"] == n_in]
            xs = [r["output"] for r in rows]

            def line(values, label, style, xs=xs, ax=ax, **kw):
                pts = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, label=label, **kw)

            def band(bands, label, style, color, xs=xs, ax=ax):
                """The central line, shaded from the pessimistic to the optimistic corner."""
                pts = [(x, b) for x, b in zip(xs, bands, strict=True) if b]
                if not pts:
                    return
                x = [p[0] for p in pts]
                ax.fill_between(x, [p[1]["optimistic"] for p in pts],
                                [p[1]["pessimistic"] for p in pts], color=color, alpha=0.25,
                                linewidth=0)
                ax.plot(x, [p[1]["central"] for p in pts], style, color=color, label=label)

            line([r["gpu_ms"]["eager"] for r in rows], f"{where} eager (measured)", "k-o")
            for d in DEVICES:
                band([r["fpga_ms"].get(d) for r in rows], f"FPGA x{d} (projected)", "-s",
                     colors[d])
            band([r["hetero_ms"].get(DEVICES[-1]) for r in rows],
                 f"{where} prefill + FPGA x{DEVICES[-1]}", "--^", "C3")
            line([r["dfx_ms"] for r in rows], "DFX x4 (published)", "D", color="red",
                 linestyle="none")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{name}, {n_in} input tokens", fontsize=10)
            ax.set_xlabel("output tokens")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("latency (ms)")
        # one legend below the panels, where it hides no line
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7,
                   title="FPGA lines: central case, shaded from the pessimistic to the "
                   "optimistic corner", title_fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.16, 1, 1))
        path = out / f"latency_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    # decode roofline: FLOP/s against operational intensity, batch 1
    config = at_corner(PRESETS[results["fpga_config"]], "central")
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    intensity = [0.25, 64]
    for d in DEVICES:
        bw = config.hbm_peak_gbps * d  # GB/s
        peak = 2 * config.mpu_lanes * config.lane_width * config.clock_mhz * 1e6 * d / 1e9
        xs = [intensity[0], peak / bw, intensity[1]]  # the ridge point between the roofs
        ax.plot(xs, [min(bw * i, peak) for i in xs], "-", alpha=0.5, color=colors[d],
                label=f"U280 x{d} roof ({bw:.0f} GB/s, {peak:,.0f} GFLOP/s at "
                f"{config.clock_mhz:.0f} MHz)")
    names = list(results["models"])
    markers = "osv^<>pP"
    for k, (name, entry) in enumerate(results["models"].items()):
        flop = 2 * entry["params"]
        weight_bytes = 2 * entry["params"]
        # every model sits at 1 FLOP per weight byte; spread them sideways to tell them apart
        x = flop / weight_bytes * 1.12 ** (k - (len(names) - 1) / 2)
        r = reference_row(entry)
        for d in DEVICES:
            b = r["fpga_decode_ms_per_token"].get(d)
            if not b or not b["central"]:  # not mappable, or one output token: no decode
                continue
            y = flop / b["central"] / 1e6
            lo, hi = flop / b["pessimistic"] / 1e6, flop / b["optimistic"] / 1e6
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt=markers[k % len(markers)],
                        color=colors[d], capsize=3, markersize=5,
                        label=f"{name} FPGA x{d}")
        ax.plot(x, flop / entry["gpu_decode_ms_per_token"] / 1e6, "kx",
                label=f"{name} {where} (measured)")
        if name == DFX_MODEL:
            ax.plot(x, flop / DFX_DECODE_MS / 1e6, "rD", label="GPT-2 1.5B on DFX (published)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (FLOP per weight byte; all models at 1, "
                  "spread for legibility)", fontsize=8)
    ax.set_ylabel("GFLOP/s in decode (batch 1)")
    ax.set_title(f"Decode roofline at ({r['input']} in, {r['output']} out): FPGA projected, "
                 "central with the pessimistic-optimistic band; DFX published", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=5.5, ncol=2)
    fig.tight_layout()
    path = out / "roofline.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


def write_reports(results: dict, out: Path) -> str:
    """results.json, table.md and the plots from what has been run so far."""
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = write_table(results, out)
    plot(results, out)
    return table


def load_results(path: Path) -> dict:
    """An earlier run's results.json, with the device counts JSON turned into strings made
    integers again (the reports index bands by device count)."""
    results = json.loads(path.read_text())
    for entry in results["models"].values():
        for row in entry["workloads"]:
            for key, value in row.items():
                if key.startswith(("fpga_", "hetero_", "kv_")) and isinstance(value, dict):
                    row[key] = {int(d): band for d, band in value.items()}
    return results


# -- the command line -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus where to look), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench_gpu_vs_fpga.py", description=__doc__.split("\n\n")[0],
                     epilog="FPGA figures are projections of the timing model at three corners "
                     "of hw.config.ASSUMPTIONS; host figures are measured on this machine.")
    parser.add_argument("--out", required=True,
                        help="directory for results.json, table.md and the plots (created)")
    parser.add_argument("--models", nargs="+", default=list(MODEL_SHAPES),
                        choices=list(MODEL_SHAPES), metavar="MODEL",
                        help="models to run, in this order (default: all: "
                        f"{', '.join(MODEL_SHAPES)})")
    parser.add_argument("--inputs", nargs="+", type=_int_at_least(2), default=list(INPUTS),
                        metavar="N", help="prompt lengths (default: DFX's "
                        f"{' '.join(map(str, INPUTS))}; at least 2, as the heterogeneous "
                        "column prefills I-1 tokens on the host)")
    parser.add_argument("--outputs", nargs="+", type=_int_at_least(1), default=list(OUTPUTS),
                        metavar="N", help="generated lengths (default: DFX's "
                        f"{' '.join(map(str, OUTPUTS))})")
    parser.add_argument("--config", default="u280", choices=("u280", "u55c"),
                        help="FPGA board preset the projections start from (its assumed "
                        "fields are replaced at each corner; default: u280)")
    parser.add_argument("--repeats", type=_int_at_least(1), default=3,
                        help="timed runs per host measurement, the median is kept (default: 3)")
    parser.add_argument("--decode-samples", type=int, default=3,
                        help="CPU only: decode positions timed per run, the rest interpolated "
                        "(0: every step; else at least 2; default: 3)")
    parser.add_argument("--pcie-gbps", type=_positive_float, default=None,
                        help="host-to-card GB/s per card at every corner (default: the "
                        "pcie_gbps assumption, "
                        + "/".join(f"{ASSUMPTIONS['pcie_gbps'].value(c):g}" for c in CORNERS)
                        + f" at the {'/'.join(CORNERS)} corner)")
    parser.add_argument("--jobs", type=_int_at_least(1), default=1,
                        help="processes for the FPGA projections (default: 1)")
    parser.add_argument("--from-results", metavar="FILE", type=Path,
                        help="measure and project nothing: redraw table.md and the plots in "
                        "--out from an earlier run's results.json")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even with CUDA")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.decode_samples < 0 or args.decode_samples == 1:
        parser.error(f"--decode-samples must be 0 (every step) or at least 2, not "
                     f"{args.decode_samples}")
    longest = max(args.inputs) + max(args.outputs)
    for name in [] if args.from_results else args.models:
        if longest > MODEL_SHAPES[name].n_positions:
            parser.error(f"--inputs and --outputs reach {longest} positions, beyond {name}'s "
                         f"context of {MODEL_SHAPES[name].n_positions}")
    args.inputs = sorted(set(args.inputs))
    args.outputs = sorted(set(args.outputs))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a directory")
    if args.from_results:
        try:
            results = load_results(args.from_results)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            parser.error(f"--from-results {args.from_results} is not a results.json of this "
                         f"script ({type(e).__name__}: {e})")
        out.mkdir(parents=True, exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        results = run(args, argv, on_model=lambda r: write_reports(r, out))
    print(write_table(results, out))
    for path in plot(results, out):
        print(f"wrote {path}")
    if not args.from_results:
        print(f"wrote {out / 'results.json'}")
    print(f"wrote {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
