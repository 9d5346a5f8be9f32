"""The data-efficiency and fill-in-the-middle studies of docs/data_efficiency.md, reproducible.

    python scripts/study.py data-efficiency --out runs/study   # 4 arms x 3 seeds
    python scripts/study.py fim --out runs/study               # AR vs 2 kinds of FIM x 3 seeds

(the defaults are the runs of docs/data_efficiency.md; its commands spell them out).

Both prepare the stdlib corpus once (`tandem data`, plus `tandem data analyze` for the
curriculum), train every run as its own `tandem train` process (printed before it starts; at
most `--jobs` at a time, each on `--threads` CPU threads, at the lowest priority with
`--nice`), poll the runs' logs for a progress line, and then measure, plot and tabulate. A
finished run is not repeated, so re-running a command only redraws its PNG and table.

Model and optimiser (both studies): GPT-2 of `--n-layer` x `--n-embd` (4 x 128, 4 heads),
`--block-size` 128-token windows, `--batch-size` 8 windows per step, `--steps` 300, AdamW
at 1e-3 with 50 warmup steps and a cosine to 1e-4; validation every 30 steps on 16 fixed
batches, and on the whole split at the end.

Data efficiency, four arms at equal training *tokens* (the tokens the model reads):

- baseline: random windows;
- curriculum: DeepSpeed's composed GPT recipe, the sequence-length truncation curriculum
  (`seqlen_truncate`, fixed_linear from block/4 to the block, done at 30% of the baseline's
  steps) with vocabulary rarity (`vocabularyrarity`, percentile 1 -> 100, fixed_root of degree
  2, done at 60%): short windows first, then rare-token windows last. Early steps read fewer
  tokens, so this arm takes more steps, as many as reach the baseline's token count;
- random-LTD: the middle layers (all but the first and last) process a random subset of the
  tokens, from block/4 to the block over 70% of the steps (fixed_linear, multiples of block/8);
- both: the curriculum and random-LTD together.

Compute is counted, not equalised: each run's training FLOPs are the model FLOPs of what it
ran, per step (6 x parameters x tokens for the matrix products, 12 x n_embd x n^2 per layer
and sequence for attention over n tokens: the PaLM count of models.train.throughput, applied
layer by layer to the truncated window length and to random-LTD's kept count). The table
gives the loss at equal tokens, and the tokens and FLOPs each arm needs to reach the
final validation loss of the baseline run with the same seed (the same initial weights).

FIM: FIM-trained runs (`--fim-rate 0.5`, the default SPM share 0.5) against AR-only runs at
equal steps; the AR runs are the data-efficiency baseline (the same command). Two FIM arms:
document-level (`fim`, the transform cuts whole files) and context-level (`fim-ctx`, files cut
first into pieces of at most `--fim-max-chars` characters, `tandem train --fim-max-chars`;
models/data/fim.py says why). Measured: the left-to-right validation loss, and infilling exact
match on `--spans` single-line spans of the validation files: a random non-blank line (at most
100 characters, at most 24 tokens) is the middle; the text before it is the prefix (its last
58 tokens at 128-token windows), the text after it the suffix (its first 40 tokens, starting
with the newline that ends the middle line). The AR model gets the prefix only; a FIM model
gets the PSM prompt <pre> prefix <suf> suffix <mid> (models.data.fim.infill_prompt_ids).
Greedy decoding stops at a newline, <eom> or <|endoftext|>; a span counts when the generated
line equals the middle exactly. Each model is also scored with the prefix alone, and by the
loss of the true middle line's tokens after each prompt, which separates models too weak for
exact match.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hw.intmath import ceil_div  # noqa: E402
from models.config import GPT2Config  # noqa: E402
from models.data import TokenData  # noqa: E402
from models.data.curriculum import CurriculumScheduler, parse_data_efficiency  # noqa: E402
from models.data.fim import FIMConfig, fim_token_stream, infill_prompt_ids  # noqa: E402
from models.gpt2 import GPT2LMHead  # noqa: E402
from models.random_ltd import RandomLTDSchedule  # noqa: E402
from models.registry import load_model  # noqa: E402
from models.tokenizer import load_tokenizer  # noqa: E402
from models.train.trainer import evaluate_split  # noqa: E402

DE_ARMS = ("baseline", "curriculum", "random-ltd", "both")
FIM_ARMS = ("ar", "fim", "fim-ctx")
COLORS = {"baseline": "black", "curriculum": "tab:blue", "random-ltd": "tab:orange",
          "both": "tab:green", "ar": "black", "fim": "tab:red", "fim-ctx": "tab:purple"}


# -- running `tandem` ------------------------------------------------------------------------


def child_env(threads: int) -> dict[str, str]:
    """Environment of every child: `threads` CPU threads for torch, BLAS and the tokenizer."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def tandem_cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "host.cli", *argv]


def show(argv: list[str]) -> str:
    return "tandem " + " ".join(shlex.quote(a) for a in argv)


def _lower_priority() -> None:
    os.nice(19)


def run_now(argv: list[str], args) -> None:
    """One `tandem` command in the foreground (corpus preparation)."""
    print("$ " + show(argv), flush=True)
    subprocess.run(tandem_cmd(argv), check=True, cwd=ROOT, env=child_env(args.threads),
                   preexec_fn=_lower_priority if args.nice else None)


@dataclass
class Run:
    """One training run: its directory, its `tandem train` arguments and its step count."""

    name: str
    arm: str
    seed: int
    directory: Path
    steps: int
    argv: list[str] = field(default_factory=list)

    def log(self) -> list[dict]:
        file = self.directory / "train_log.jsonl"
        if not file.is_file():
            return []
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]

    def progress(self) -> int:
        """Steps logged so far; a fresh run writes a temporary sibling until it ends."""
        files = [self.directory / "train_log.jsonl",
                 *self.directory.parent.glob(f".{self.directory.name}.tmp-*/train_log.jsonl")]
        steps = [json.loads(f.read_text().splitlines()[-1])["step"]
                 for f in files if f.is_file() and f.read_text().strip()]
        return max(steps, default=0)

    def complete(self) -> bool:
        log = self.log()
        return bool(log) and log[-1]["step"] == self.steps and \
            (self.directory / "model.safetensors").is_file()


def run_all(runs: list[Run], args, logs: Path) -> None:
    """Train every incomplete run, `args.jobs` at a time, printing progress while they go."""
    logs.mkdir(parents=True, exist_ok=True)
    pending = [r for r in runs if not r.complete()]
    for r in runs:
        if r.complete():
            print(f"# {r.name}: complete ({r.steps} steps) in {r.directory}", flush=True)
    running: dict[str, tuple[Run, subprocess.Popen, float]] = {}
    last_report = 0.0
    t0 = time.time()
    done = len(runs) - len(pending)
    while pending or running:
        while pending and len(running) < args.jobs:
            r = pending.pop(0)
            argv = list(r.argv)
            if (r.directory / "trainer_state.pt").is_file():
                argv.append("--resume")
            print(f"$ {show(argv)}    # {r.name}, log {logs / (r.name + '.log')}", flush=True)
            with open(logs / f"{r.name}.log", "w") as out:
                proc = subprocess.Popen(tandem_cmd(argv), cwd=ROOT, env=child_env(args.threads),
                                        stdout=out, stderr=subprocess.STDOUT,
                                        preexec_fn=_lower_priority if args.nice else None)
            running[r.name] = (r, proc, time.time())
        time.sleep(2)
        for name, (r, proc, started) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[name]
            if code != 0 or not r.complete():
                tail = (logs / f"{name}.log").read_text()[-2000:]
                for _, other, _ in running.values():
                    other.terminate()
                raise SystemExit(f"{name} failed (exit code {code}); its log ends:\n{tail}")
            done += 1
            print(f"# {name}: done in {(time.time() - started) / 60:.1f} min "
                  f"({done}/{len(runs)} runs)", flush=True)
        if running and time.time() - last_report > args.report_every:
            last_report = time.time()
            parts = []
            for r, _, started in running.values():
                step = r.progress()
                rate = step / max(time.time() - started, 1e-9)
                eta = (r.steps - step) / rate / 60 if step else float("nan")
                parts.append(f"{r.name} {step}/{r.steps} (eta {eta:.0f} min)")
            print(f"[{time.strftime('%H:%M:%S')}, {(time.time() - t0) / 60:.0f} min] "
                  f"{done}/{len(runs)} done; running: " + ", ".join(parts), flush=True)


def prepare(args) -> Path:
    """The corpus (`tandem data`) and, for a curriculum, its difficulty index."""
    corpus = Path(args.corpus) if args.corpus else Path(args.out) / "corpus"
    if not (corpus / "meta.json").is_file():
        argv = ["data", "--out", str(corpus), "--vocab-size", str(args.vocab_size)]
        if args.limit_files:
            argv += ["--limit-files", str(args.limit_files)]
        if args.val_fraction is not None:
            argv += ["--val-fraction", str(args.val_fraction)]
        run_now(argv, args)
    return corpus


def analyze(corpus: Path, args) -> None:
    if not (corpus / f"analysis_b{args.block_size}" / "analysis.json").is_file():
        run_now(["data", "analyze", "--data", str(corpus), "--block-size",
                 str(args.block_size)], args)


def train_argv(args, corpus: Path, directory: Path, steps: int, seed: int,
               extra: list[str]) -> list[str]:
    return ["train", "--data", str(corpus), "--out", str(directory), "--no-progress",
            "--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd),
            "--n-head", str(args.n_head), "--block-size", str(args.block_size),
            "--batch-size", str(args.batch_size), "--max-steps", str(steps),
            "--warmup-steps", str(args.warmup_steps), "--lr", "1e-3", "--min-lr", "1e-4",
            "--eval-interval", str(args.eval_interval),
            "--eval-batches", str(args.eval_batches), "--seed", str(seed), *extra]


def full_val(run: Run, corpus: Path) -> dict:
    """Loss over the whole validation split (cached in the run directory)."""
    cache = run.directory / "study_full_val.json"
    if not cache.is_file():
        model = load_model(run.directory)
        cache.write_text(json.dumps(evaluate_split(model, TokenData(corpus), "val",
                                                   progress=False)) + "\n")
    return json.loads(cache.read_text())


def spread(values: list[float], fmt: str = "{:.4f}") -> str:
    """'mean (a, b)': the mean, then each seed's value."""
    if not values:
        return "-"
    inner = ", ".join(fmt.format(v) for v in values)
    return f"{fmt.format(float(np.mean(values)))} ({inner})"


# -- data efficiency ---------------------------------------------------------------------------


def de_config(arm: str, seed: int, steps: int, args) -> dict | None:
    """DeepSpeed's data_efficiency JSON of an arm (None for the baseline); `steps` are the
    baseline's, which the schedules' lengths are fractions of."""
    if arm == "baseline":
        return None
    block = args.block_size
    cl = arm in ("curriculum", "both")
    ltd = arm in ("random-ltd", "both")
    seq_step = max(1, block // 16)
    metrics = {
        "seqlen_truncate": {
            "difficulty_type": "value", "clustering_type": "single_cluster",
            "min_difficulty": max(seq_step, block // 4), "max_difficulty": block,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": max(1, round(0.3 * steps)),
                                "difficulty_step": seq_step}},
        "vocabularyrarity": {
            "difficulty_type": "percentile", "clustering_type": "schedule_based",
            "min_difficulty": 1, "max_difficulty": 100, "schedule_type": "fixed_root",
            "schedule_config": {"total_curriculum_step": max(1, round(0.6 * steps)),
                                "difficulty_step": 1, "root_degree": 2}},
    }
    ltd_step = max(1, block // 8)
    layers = list(range(1, args.n_layer - 1))
    return {"data_efficiency": {
        "enabled": True, "seed": seed,
        "data_sampling": {"enabled": cl, "curriculum_learning": {
            "enabled": cl, "curriculum_metrics": metrics}},
        "data_routing": {"enabled": ltd, "random_ltd": {
            "enabled": ltd, "random_ltd_layer_id": layers, "random_ltd_layer_num": len(layers),
            "random_ltd_schedule": {
                "min_value": max(ltd_step, block // 4), "max_value": block,
                "schedule_type": "fixed_linear",
                "schedule_config": {"require_steps": max(1, round(0.7 * steps)),
                                    "seq_per_step": ltd_step}}}},
    }}


def step_shapes(config: dict | None, steps: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(window length, random-LTD kept count) of each trainer step 0..steps-1, from the same
    schedule classes the trainer runs (kept == length where nothing is dropped)."""
    lengths = np.full(steps, block, dtype=np.int64)
    kept = np.full(steps, block, dtype=np.int64)
    if config is None:
        return lengths, kept
    de = parse_data_efficiency(config)
    for m in de.curriculum.metrics if de.curriculum.enabled else ():
        if m.metric == "seqlen_truncate":
            sched = CurriculumScheduler(m.schedule)
            lengths = np.array([min(block, int(sched.update_difficulty(s + 1)))
                                for s in range(steps)], dtype=np.int64)
    if de.random_ltd.enabled:
        c = de.random_ltd
        sched = RandomLTDSchedule(c.min_value, c.max_value, c.require_steps, c.seq_per_step)
        kept = np.array([sched.update(s) for s in range(steps)], dtype=np.int64)
    return lengths, np.minimum(kept, lengths)


def steps_for_tokens(config: dict | None, tokens: int, batch: int, block: int) -> int:
    """The fewest steps whose windows hold at least `tokens` tokens."""
    guess = ceil_div(tokens, batch * block)
    while True:
        lengths, _ = step_shapes(config, 2 * guess, block)
        cum = np.cumsum(lengths * batch)
        hit = np.flatnonzero(cum >= tokens)
        if len(hit):
            return int(hit[0]) + 1
        guess *= 2


def flops_per_step(config: dict | None, steps: int, args) -> np.ndarray:
    """Model FLOPs (forward + backward) of each step: the PaLM count of
    models.train.throughput.flops_per_token, layer by layer over the tokens each layer runs."""
    model = GPT2LMHead(GPT2Config(vocab_size=args.vocab_size, n_positions=args.block_size,
                                  n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head))
    per_block = sum(p.numel() for p in model.transformer.h[0].parameters())
    rest = sum(p.numel() for n, p in model.named_parameters()
               if not n.startswith("transformer.h.") and "wpe" not in n)
    lengths, kept = step_shapes(config, steps, args.block_size)
    de = parse_data_efficiency(config) if config else None
    ltd_layers = set(range(1, args.n_layer - 1))
    if de is not None and de.random_ltd.enabled and de.random_ltd.layer_ids:
        ltd_layers = set(de.random_ltd.layer_ids)
    if de is None or not de.random_ltd.enabled:
        ltd_layers = set()
    C = args.n_embd
    total = 6.0 * rest * lengths.astype(np.float64)
    for layer in range(args.n_layer):
        n = (kept if layer in ltd_layers else lengths).astype(np.float64)
        total += 6.0 * per_block * n + 12.0 * C * n * n
    return total * args.batch_size


def crossing(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first x where the curve (linearly interpolated) reaches y <= target."""
    for i, y in enumerate(ys):
        if y <= target:
            if i == 0:
                return xs[0]
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], y
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    return None


def data_efficiency(args) -> None:
    corpus = prepare(args)
    analyze(corpus, args)
    out = Path(args.out) / "data-efficiency"
    (out / "configs").mkdir(parents=True, exist_ok=True)
    base_steps = args.steps
    base_tokens = base_steps * args.batch_size * args.block_size
    runs: list[Run] = []
    configs: dict[str, dict | None] = {}
    for seed in args.seeds:
        for arm in args.arms:
            config = de_config(arm, seed, base_steps, args)
            steps = steps_for_tokens(config, base_tokens, args.batch_size, args.block_size)
            extra = []
            if config is not None:
                path = out / "configs" / f"{arm}-s{seed}.json"
                path.write_text(json.dumps(config, indent=2) + "\n")
                extra = ["--data-efficiency", str(path)]
            name = f"{arm}-s{seed}"
            configs[name] = config
            runs.append(Run(name, arm, seed, out / name, steps,
                            train_argv(args, corpus, out / name, steps, seed, extra)))
    (out / "commands.txt").write_text("".join(show(r.argv) + "\n" for r in runs))
    run_all(runs, args, Path(args.logs) if args.logs else out / "logs")

    # validation-loss curves over training tokens and over training FLOPs
    curves = {}
    for r in runs:
        log = r.log()
        flops = np.cumsum(flops_per_step(configs[r.name], r.steps, args))
        curves[r.name] = ([x["tokens"] for x in log], [x["val_loss"] for x in log],
                          [float(flops[x["step"] - 1]) for x in log])
    # the target of each run: the final validation loss of the baseline run of its seed (the
    # same initial weights), so the comparison is paired and the baseline reaches it at its end
    targets = {r.seed: curves[r.name][1][-1] for r in runs if r.arm == "baseline"}
    half = base_tokens / 2
    rows = []
    summary = {}
    for arm in args.arms:
        mine = [r for r in runs if r.arm == arm]
        finals = [full_val(r, corpus)["loss"] for r in mine]
        fixed = [curves[r.name][1][-1] for r in mine]
        at_half = [float(np.interp(half, curves[r.name][0], curves[r.name][1])) for r in mine]
        # at the baseline's step count: the curriculum arms have read fewer tokens by then
        at_steps = [next(x["val_loss"] for x in r.log() if x["step"] >= base_steps)
                    for r in mine]
        tokens = [curves[r.name][0][-1] for r in mine]
        flops = [curves[r.name][2][-1] for r in mine]
        reach_t, reach_f = [], []
        for r in mine:
            xs, ys, fs = curves[r.name]
            t = crossing(xs, ys, targets[r.seed]) if r.seed in targets else None
            reach_t.append(t)
            reach_f.append(None if t is None else float(np.interp(t, xs, fs)))
        minutes = [r.log()[-1]["elapsed_s"] / 60 for r in mine]
        reached = [t for t in reach_t if t is not None]
        reach_text = "not reached" if not reached else \
            spread([t / 1e3 for t in reached], "{:.0f}") + " k" + \
            ("" if len(reached) == len(mine) else f" ({len(mine) - len(reached)} seed(s) never)")
        reached_f = [f for f in reach_f if f is not None]
        reach_f_text = "-" if not reached_f else spread([f / 1e12 for f in reached_f], "{:.2f}")
        rows.append(f"| {arm} | {mine[0].steps} | {np.mean(tokens) / 1e3:.0f} k | "
                    f"{np.mean(flops) / 1e12:.2f} | {spread(at_half, '{:.3f}')} | "
                    f"{spread(fixed, '{:.3f}')} | {spread(finals, '{:.3f}')} | "
                    f"{spread(at_steps, '{:.3f}')} | "
                    f"{reach_text} | {reach_f_text} | {np.mean(minutes):.1f} |")
        summary[arm] = {"steps": mine[0].steps, "tokens": tokens, "train_tflops":
                        [f / 1e12 for f in flops], "val_fixed_half_tokens": at_half,
                        "val_fixed": fixed, "val_full": finals, "val_fixed_base_steps": at_steps,
                        "tokens_to_target": reach_t,
                        "tflops_to_target": [None if f is None else f / 1e12 for f in reach_f],
                        "minutes": minutes}
    table = "\n".join([
        f"Validation loss: {args.eval_batches} fixed batches of the validation split (the "
        "curves), and the whole split at the end; each cell is the mean over seeds, then each "
        "seed's value (seeds " + ", ".join(map(str, args.seeds)) + "). Target: the final loss "
        "(fixed batches) of the baseline run with the same seed.",
        "",
        f"| arm | steps | training tokens | training TFLOPs | val loss at {half / 1e3:.0f} k "
        "tokens | val loss at the end | val loss at the end, full split | val loss after "
        f"{base_steps} steps | tokens to reach the target | TFLOPs to reach it | wall min/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    (out / "table.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({"targets": targets, "arms": summary},
                                                 indent=2) + "\n")
    plot_de(runs, curves, targets, Path(args.png or ROOT / "docs" / "study_data_efficiency.png"),
            args)
    print(table)


def plot_de(runs: list[Run], curves: dict, targets: dict, png: Path, args) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4))
    ax_t, ax_f = fig.subplots(1, 2, sharey=True)
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r.seed for r in runs})
    last = []
    for r in runs:
        xs, ys, fs = curves[r.name]
        style = styles[seeds.index(r.seed) % len(styles)]
        label = f"{r.arm}, seed {r.seed}"
        ax_t.plot(np.array(xs) / 1e6, ys, style, color=COLORS[r.arm], label=label, lw=1.3)
        ax_f.plot(np.array(fs) / 1e12, ys, style, color=COLORS[r.arm], label=label, lw=1.3)
        last.append(ys[len(ys) // 3])
    for ax in (ax_t, ax_f):
        for value in targets.values():
            ax.axhline(value, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    lows = [min(curves[r.name][1]) for r in runs]
    ax_t.set_ylim(min(lows) - 0.05, max(last) + 0.05)  # the second and third thirds
    ax_t.set_xlabel("training tokens (millions)")
    ax_f.set_xlabel("training compute (model TFLOPs)")
    ax_t.set_ylabel(f"validation loss (nats/token, {args.eval_batches} fixed batches)")
    ax_f.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Data efficiency, {args.n_layer}x{args.n_embd} GPT-2, {args.block_size}-token "
                 "windows, stdlib corpus (dotted: each seed's baseline final loss)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"plot: {png}")


# -- FIM ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    prefix: str
    middle: str  # one whole line, without its newline
    suffix: str  # starts with the newline that ends the middle line


def val_documents(corpus: Path) -> list[str]:
    data = TokenData(corpus)
    tok = load_tokenizer(corpus)
    ids = np.asarray(data.splits["val"])
    ends = np.flatnonzero(ids == data.meta.eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tok.decode(ids[a:b].tolist()) for a, b in zip(starts, ends, strict=True)]


def draw_spans(corpus: Path, n: int, seed: int, prefix_tokens: int, suffix_tokens: int,
               middle_tokens: int) -> list[Span]:
    """`n` distinct single-line spans of the validation files, drawn with `seed`: a random
    document, a random non-blank line of it (<= 100 characters, <= middle_tokens tokens)."""
    tok = load_tokenizer(corpus)
    docs = val_documents(corpus)
    rng = np.random.default_rng(seed)
    spans: list[Span] = []
    seen: set[tuple[int, int]] = set()
    lines = [d.split("\n") for d in docs]
    for _ in range(100 * n):
        if len(spans) == n:
            break
        d = int(rng.integers(len(docs)))
        if len(lines[d]) < 3:
            continue
        i = int(rng.integers(1, len(lines[d]) - 1))  # a line with text before and after it
        line = lines[d][i]
        if (d, i) in seen or not line.strip() or len(line) > 100 or \
                len(tok.encode(line)) > middle_tokens:
            continue
        seen.add((d, i))
        before = "\n".join(lines[d][:i]) + "\n"
        after = "\n" + "\n".join(lines[d][i + 1:])
        prefix = tok.decode(tok.encode(before[-2000:])[-prefix_tokens:])
        suffix = tok.decode(tok.encode(after[:2000])[:suffix_tokens])
        spans.append(Span(prefix, line, suffix))
    if len(spans) < n:
        raise SystemExit(f"only {len(spans)} single-line spans in the validation files")
    return spans


def complete_line(model, tok, prompt: list[int], max_new: int, stops: set[int]) -> str:
    """Greedy continuation of `prompt` up to the first newline or stop token (exclusive)."""
    out: list[int] = []
    for token in model.stream(prompt, max_new):
        if token in stops:
            break
        out.append(token)
        if "\n" in tok.decode(out):
            break
    return tok.decode(out).split("\n")[0]


def infill_exact_match(run: Run, spans: list[Span], fim: bool) -> dict:
    """Exact match of the generated middle line (cached in the run directory): from the PSM
    infill prompt when `fim`, else from the prefix alone."""
    cache = run.directory / f"study_infill_{len(spans)}{'' if fim else '_prefix'}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    model = load_model(run.directory)
    tok = load_tokenizer(run.directory)
    n_ctx = model.config.n_positions
    stops = {model.config.eos_token_id}
    if fim:
        stops.add(tok.fim_tokens().end)
    hits, examples = 0, []
    for span in spans:
        prompt = infill_prompt_ids(tok, span.prefix, span.suffix) if fim else \
            tok.encode(span.prefix)
        prompt = prompt[-(n_ctx - 1):]
        got = complete_line(model, tok, prompt, n_ctx - len(prompt), stops)
        hits += got == span.middle
        if len(examples) < 8:
            examples.append({"middle": span.middle, "generated": got})
    result = {"spans": len(spans), "exact": hits, "exact_match": hits / len(spans),
              "examples": examples}
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def middle_nll(run: Run, spans: list[Span], fim: bool) -> float:
    """Mean loss (nats/token) of the true middle's tokens after the prompt of
    `infill_exact_match` (cached): a measure that still separates models too weak to write
    a whole line exactly. Both prompts are followed by the same tokens, encode(middle)."""
    cache = run.directory / f"study_middle_nll_{len(spans)}{'' if fim else '_prefix'}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["nll"]
    model = load_model(run.directory)
    tok = load_tokenizer(run.directory)
    n_ctx = model.config.n_positions
    total, count = 0.0, 0
    for span in spans:
        prompt = infill_prompt_ids(tok, span.prefix, span.suffix) if fim else \
            tok.encode(span.prefix)
        middle = tok.encode(span.middle)
        ids = (prompt + middle)[-n_ctx:]
        logits, _ = model(torch.tensor([ids]))  # (1, L, V)
        n = len(middle)
        pred = logits[0, len(ids) - n - 1 : len(ids) - 1]  # (n, V): the positions before each
        total += torch.nn.functional.cross_entropy(pred.float(), torch.tensor(middle),
                                                   reduction="sum").item()
        count += n
    nll = total / count
    cache.write_text(json.dumps({"nll": nll, "tokens": count}) + "\n")
    return nll


def fim_fit(corpus: Path, config: FIMConfig, block: int, n_docs: int = 150) -> tuple[int, float]:
    """(FIM examples, share of them no longer than `block` tokens from <pre> to <eom>) in the
    stream of `n_docs` train files (every k-th) transformed as a training run would: only an
    example that fits in a window teaches the model to infill from both sides at once."""
    data = TokenData(corpus)
    tok = load_tokenizer(corpus).with_fim()
    ids = np.asarray(data.splits["train"])
    ends = np.flatnonzero(ids == data.meta.eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    pick = np.linspace(0, len(ends) - 1, min(n_docs, len(ends))).astype(int)
    docs = [tok.decode(ids[starts[i]:ends[i]].tolist()) for i in pick]
    stream = fim_token_stream(docs, tok, config, seed=1, eot_id=data.meta.eot_id)
    fim = tok.fim_tokens()
    lengths = np.flatnonzero(stream == fim.end) - np.flatnonzero(stream == fim.prefix) + 1
    return len(lengths), float(np.mean(lengths <= block)) if len(lengths) else 0.0


def fim_study(args) -> None:
    corpus = prepare(args)
    out = Path(args.out) / "fim"
    fim = ["--fim-rate", str(args.fim_rate), "--fim-spm-rate", str(args.fim_spm_rate)]
    arms = {"ar": [], "fim": fim, "fim-ctx": [*fim, "--fim-max-chars", str(args.fim_max_chars)]}
    runs = []
    for arm in args.fim_arms:
        for seed in args.seeds:
            # the AR arm is the data-efficiency study's baseline: the same command
            directory = Path(args.out) / "data-efficiency" / f"baseline-s{seed}" \
                if arm == "ar" else out / f"{arm}-s{seed}"
            runs.append(Run(f"{arm}-s{seed}", arm, seed, directory, args.steps,
                            train_argv(args, corpus, directory, args.steps, seed, arms[arm])))
    (out / "commands.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "commands.txt").write_text("".join(show(r.argv) + "\n" for r in runs))
    run_all(runs, args, Path(args.logs) if args.logs else out / "logs")

    middle = 24
    budget = args.block_size - middle - 6  # 3 sentinels, 3 spare (re-tokenised edges)
    prefix_tokens = budget * 6 // 10
    spans = draw_spans(corpus, args.spans, 2026, prefix_tokens, budget - prefix_tokens, middle)
    (out / "spans.json").write_text(json.dumps([s.__dict__ for s in spans], indent=1) + "\n")
    rows, results = [], {}
    for arm in args.fim_arms:
        mine = [r for r in runs if r.arm == arm]
        full = [full_val(r, corpus)["loss"] for r in mine]
        fixed = [r.log()[-1]["val_loss"] for r in mine]
        em = [infill_exact_match(r, spans, fim=arm != "ar") for r in mine]
        alone = [infill_exact_match(r, spans, fim=False) for r in mine]  # the prefix only
        nll = [middle_nll(r, spans, fim=arm != "ar") for r in mine]
        nll_alone = [middle_nll(r, spans, fim=False) for r in mine]
        results[arm] = {"val_full": full, "val_fixed": fixed,
                        "exact_match": [e["exact_match"] for e in em],
                        "exact": [e["exact"] for e in em],
                        "exact_match_prefix_only": [e["exact_match"] for e in alone],
                        "middle_nll": nll, "middle_nll_prefix_only": nll_alone}
        infill = "-" if arm == "ar" else \
            spread([100 * e["exact_match"] for e in em], "{:.1f}") + " %"
        name = {"ar": "AR only", "fim": "FIM, document-level",
                "fim-ctx": f"FIM, context-level ({args.fim_max_chars} chars)"}[arm]
        rows.append(f"| {name} | {mine[0].steps} | {spread(fixed, '{:.3f}')} | "
                    f"{spread(full, '{:.3f}')} | "
                    f"{spread([100 * e['exact_match'] for e in alone], '{:.1f}')} % | "
                    f"{infill} | {spread(nll_alone, '{:.3f}')} | "
                    f"{'-' if arm == 'ar' else spread(nll, '{:.3f}')} |")
    fits = []
    for name, chars in (("document-level", 0), ("context-level", args.fim_max_chars)):
        n, share = fim_fit(corpus, FIMConfig(args.fim_rate, args.fim_spm_rate, chars),
                           args.block_size)
        fits.append(f"{name} {100 * share:.1f}% of {n}")
    table = "\n".join([
        f"{len(spans)} single-line spans of the validation files; greedy decoding. FIM examples "
        f"(<pre> to <eom>) that fit in one {args.block_size}-token window, in 150 train files: "
        + ", ".join(fits) + ".",
        "",
        f"| arm | steps | val loss, {args.eval_batches} fixed batches: mean (seeds) | "
        "val loss, full split | exact match, prefix only | exact match, prefix + suffix (PSM) | "
        "middle loss, prefix only | middle loss, prefix + suffix (PSM) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    (out / "table.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_fim(runs, results, Path(args.png or ROOT / "docs" / "study_fim.png"), args)
    print(table)


def plot_fim(runs: list[Run], results: dict, png: Path, args) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.8))
    ax, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [5, 6]})
    seeds = sorted({r.seed for r in runs})
    tail = []
    for r in runs:
        log = r.log()
        xs = np.array([x["tokens"] for x in log]) / 1e6
        ys = [x["val_loss"] for x in log]
        ax.plot(xs, ys, "-" if seeds.index(r.seed) == 0 else "--", color=COLORS[r.arm],
                label=f"{r.arm}, seed {r.seed}", lw=1.3)
        tail.append(ys[len(ys) // 3])
    ax.set_ylim(min(min(x["val_loss"] for x in r.log()) for r in runs) - 0.05, max(tail) + 0.05)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel(f"left-to-right validation loss ({args.eval_batches} fixed batches)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    # per arm and seed: the loss of the true middle line (and its exact match, in the label)
    # after the arm's prompt (AR: prefix only; FIM: prefix + suffix), and for the FIM arms
    # after the prefix alone, hatched
    labels, x = [], 0.0
    for arm, res in results.items():
        groups = [("prefix" if arm == "ar" else "pre+suf", res["middle_nll"],
                   res["exact_match"], "")]
        if arm != "ar":
            groups.append(("prefix", res["middle_nll_prefix_only"],
                           res["exact_match_prefix_only"], "//"))
        for what, values, exact, hatch in groups:
            for j, value in enumerate(values):
                bars.bar(x, value, 0.9, color=COLORS[arm], hatch=hatch,
                         alpha=1.0 if not hatch else 0.45, edgecolor="white" if hatch else None)
                bars.text(x, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
                labels.append((x, f"{arm}\n{what}\nseed {seeds[j]}\nEM {100 * exact[j]:.0f}%"))
                x += 1
            x += 0.4
        x += 0.6
    bars.set_xticks([a for a, _ in labels], [b for _, b in labels], fontsize=6)
    low = min(min(r["middle_nll"] + r.get("middle_nll_prefix_only", [])) for r in results.values())
    bars.set_ylim(low - 0.5, None)
    bars.set_ylabel(f"loss of the true middle line, nats/token ({args.spans} lines)\n"
                    "after prefix + suffix (solid) or the prefix only (hatched)")
    bars.grid(alpha=0.3, axis="y")
    fig.suptitle(f"FIM for free? {args.n_layer}x{args.n_embd} GPT-2, {args.block_size}-token "
                 f"windows, {args.steps} steps, stdlib corpus", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"plot: {png}")


# -- command line --------------------------------------------------------------------------------


def _check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, with one line and exit 2, what no run could use (before any corpus is built)."""
    for name in ("steps", "n_layer", "n_embd", "n_head", "block_size", "batch_size",
                 "eval_interval", "eval_batches", "spans", "vocab_size", "jobs", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    for name in ("warmup_steps", "limit_files", "fim_max_chars"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0, not {getattr(args, name)}")
    if any(not 0 <= seed < 2**63 for seed in args.seeds):
        ap.error(f"--seeds must be integers in [0, 2**63), not {args.seeds}")
    for name in ("fim_rate", "fim_spm_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:  # also refuses NaN
            ap.error(f"--{name.replace('_', '-')} must be in [0, 1], not {getattr(args, name)}")
    if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
        ap.error(f"--val-fraction must be in (0, 1), not {args.val_fraction}")
    if not 0.0 < args.report_every < float("inf"):
        ap.error(f"--report-every must be a positive number of seconds, not {args.report_every}")
    if args.png and Path(args.png).is_dir():
        ap.error(f"--png {args.png} is a directory; give the PNG's file name")
    for name in ("out", "logs", "corpus"):
        path = getattr(args, name)
        if path and Path(path).exists() and not Path(path).is_dir():
            ap.error(f"--{name} {path} is a file, not a directory")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("study", choices=["data-efficiency", "fim"])
    ap.add_argument("--out", default="runs/study", help="directory for the corpus and runs")
    ap.add_argument("--corpus", default="", help="prepared corpus (default: OUT/corpus, built)")
    ap.add_argument("--png", default="", help="where the plot goes (default: docs/study_*.png)")
    ap.add_argument("--logs", default="", help="directory of the runs' logs (default: in OUT)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--arms", nargs="+", default=list(DE_ARMS), choices=DE_ARMS,
                    help="data-efficiency arms")
    ap.add_argument("--fim-arms", nargs="+", default=["ar", "fim-ctx", "fim"],
                    choices=FIM_ARMS)
    ap.add_argument("--steps", type=int, default=300,
                    help="optimiser steps of the baseline / of every FIM run")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--eval-interval", type=int, default=30)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--fim-rate", type=float, default=0.5)
    ap.add_argument("--fim-spm-rate", type=float, default=0.5)
    ap.add_argument("--fim-max-chars", type=int, default=320,
                    help="context-level FIM arm: piece length in characters (~95 tokens here)")
    ap.add_argument("--spans", type=int, default=240, help="infilling spans (FIM study)")
    ap.add_argument("--vocab-size", type=int, default=4096, help="corpus BPE vocabulary")
    ap.add_argument("--limit-files", type=int, default=0, help="corpus: first N files only")
    ap.add_argument("--val-fraction", type=float, default=None)
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    ap.add_argument("--nice", action=argparse.BooleanOptionalAction, default=True,
                    help="train at the lowest CPU priority")
    ap.add_argument("--report-every", type=float, default=60.0,
                    help="seconds between progress lines")
    args = ap.parse_args(argv)
    _check_args(ap, args)
    torch.set_num_threads(args.threads)
    (data_efficiency if args.study == "data-efficiency" else fim_study)(args)


if __name__ == "__main__":
    main()
