"""Dense vs MoE from scratch vs MoE upcycled from dense, at equal compute, on the stdlib corpus.

Every arm is a 4 x 128 GPT-2 (4 heads, 128-token windows, 16 windows per step, AdamW with
warmup + cosine), trained for the same number of optimiser steps in total, so the same number
of training tokens. The MoE arms use 8 experts in blocks 1 and 3 with top-1 routing, so a
token activates one expert MLP where the dense model runs one MLP: the same active FLOPs per
token up to the router (128 x 8 multiply-adds per MoE block, < 0.1%). The upcycled arm spends
the first `--upcycle-at` steps as a dense model (its own warmup + cosine schedule), is
upcycled (experts copied from the MLPs, fresh routers), and trains as an MoE for the rest of
the steps (a new warmup + cosine), so its total is the same as the other arms'. Its control
is the same dense checkpoint continued as a dense model with the same restarted schedule
("dense, restarted"), which separates the effect of upcycling from that of the restart.

Every step is a `tandem` command, printed before it runs; a finished run is not repeated, so
re-running the script only redraws the plot and the table.

    .venv/bin/python scripts/moe_experiment.py --data data/stdlib --out runs/moe-experiment
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
from pathlib import Path

import torch
from matplotlib.figure import Figure

from host.cli import main as tandem
from models.registry import load_model

ROOT = Path(__file__).resolve().parents[1]

MODEL = ["--n-layer", "4", "--n-embd", "128", "--n-head", "4", "--block-size", "128"]
OPTIM = ["--batch-size", "16", "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-steps", "50",
         "--eval-interval", "50", "--eval-batches", "20", "--seed", "1337"]
MOE = ["--moe-num-experts", "8", "--moe-every", "2", "--moe-top-k", "1",
       "--moe-capacity-factor", "1.25"]


def run(argv: list[str]) -> str:
    print("$ tandem " + " ".join(shlex.quote(a) for a in argv), flush=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = tandem(argv)
    if code:
        raise SystemExit(f"tandem {argv[0]} failed with exit code {code}")
    return out.getvalue()


def log_of(run_dir: Path) -> list[dict]:
    file = run_dir / "train_log.jsonl"
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line]


def train(data: str, run_dir: Path, steps: int, extra: list[str]) -> None:
    log = log_of(run_dir)
    if log and log[-1]["step"] == steps:
        print(f"# {run_dir} is complete ({steps} steps)", flush=True)
        return
    resume = ["--resume"] if (run_dir / "trainer_state.pt").is_file() else []
    run(["train", "--data", data, "--out", str(run_dir), "--max-steps", str(steps),
         *MODEL, *OPTIM, *extra, *resume])


def full_val(data: str, run_dir: Path) -> dict:
    cache = run_dir / "full_val.json"
    if not cache.is_file():
        cache.write_text(run(["eval", "--model", str(run_dir), "--data", data, "--json"]))
    return json.loads(cache.read_text())


def params(run_dir: Path) -> tuple[int, int]:
    """(total parameters, parameters a token activates)."""
    model = load_model(run_dir)
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    if hasattr(model, "moe_blocks"):
        for _, moe in model.moe_blocks():
            per_expert = sum(p.numel() for p in moe.experts[0].parameters())
            inactive += (moe.num_experts - moe.k) * per_expert
    return total, total - inactive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/stdlib", help="prepared corpus (`tandem data`)")
    ap.add_argument("--out", default="runs/moe-experiment", help="directory for the runs")
    ap.add_argument("--steps", type=int, default=1000, help="optimiser steps per arm in total")
    ap.add_argument("--upcycle-at", type=int, default=500,
                    help="dense steps of the upcycled arm before it becomes an MoE")
    ap.add_argument("--results", default=str(ROOT / "scripts" / "results"),
                    help="where the PNG and the markdown table go")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the times in the table used 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    T, U = args.steps, args.upcycle_at
    if not 0 < U < T:
        raise SystemExit(f"--upcycle-at must be in 1..{T - 1}, not {U}")

    dirs = {"dense": out / "dense", "moe": out / "moe-scratch", "dense_u": out / f"dense-{U}",
            "init": out / f"upcycled-{U}-init", "up": out / f"upcycled-{U}",
            "cont": out / f"dense-{U}-continued"}
    train(args.data, dirs["dense"], T, [])
    train(args.data, dirs["moe"], T, MOE)
    train(args.data, dirs["dense_u"], U, [])
    if not (dirs["init"] / "model.safetensors").is_file():
        run(["upcycle", "--from", str(dirs["dense_u"]), "--out", str(dirs["init"]),
             "--experts", "8", "--every", "2", "--top-k", "1", "--capacity-factor", "1.25"])
    train(args.data, dirs["up"], T - U, [*MOE, "--init-from", str(dirs["init"])])
    train(args.data, dirs["cont"], T - U, ["--init-from", str(dirs["dense_u"])])

    tokens_per_step = 16 * 128
    arms = [
        ("dense", [(dirs["dense"], 0)], dirs["dense"], f"{T} dense"),
        ("MoE from scratch", [(dirs["moe"], 0)], dirs["moe"], f"{T} MoE"),
        ("MoE upcycled from dense", [(dirs["dense_u"], 0), (dirs["up"], U)], dirs["up"],
         f"{U} dense + {T - U} MoE"),
        ("dense, restarted (control)", [(dirs["dense_u"], 0), (dirs["cont"], U)], dirs["cont"],
         f"{U} dense + {T - U} dense"),
    ]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    rows = []
    for name, parts, final, steps_text in arms:
        xs, ys = [], []
        for run_dir, offset in parts:
            for r in log_of(run_dir):
                xs.append((r["step"] + offset) * tokens_per_step / 1e6)
                ys.append(r["val_loss"])
        style = "--" if "control" in name else "-"
        ax.plot(xs, ys, style, label=name, marker="." if len(xs) < 40 else None)
        last = log_of(final)[-1]
        total, active = params(final)
        seconds = sum(log_of(d)[-1]["elapsed_s"] for d, _ in parts)
        val = full_val(args.data, final)
        rows.append(f"| {name} | {steps_text} | {T * tokens_per_step / 1e6:.2f} M | "
                    f"{total / 1e6:.2f} M | {active / 1e6:.2f} M | {last['val_loss']:.4f} | "
                    f"{val['loss']:.4f} | {val['perplexity']:.2f} | {seconds / 60:.1f} |")
    ax.axvline(U * tokens_per_step / 1e6, color="grey", linestyle=":", linewidth=1)
    ax.text(U * tokens_per_step / 1e6, ax.get_ylim()[1], " upcycled here", va="top",
            fontsize=8, color="grey")
    ax.set_xlabel("training tokens (millions); equal active FLOPs per token in every arm")
    ax.set_ylabel("validation loss (nats/token, 20 fixed batches)")
    ax.set_title("4x128 GPT-2 on the stdlib corpus: dense vs MoE (8 experts, top-1)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = results / "moe_experiment.png"
    fig.savefig(png, dpi=120)
    table = "\n".join([
        "| arm | optimiser steps | training tokens | parameters | active / token | "
        "val loss (20 batches) | val loss (full split) | val perplexity | wall minutes |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    (results / "moe_experiment.md").write_text(table + "\n")
    print(table)
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
