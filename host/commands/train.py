"""Train a GPT-2 language model on a prepared corpus (see `tandem data`).

Every --eval-interval steps the run directory becomes a loadable HF-format checkpoint
(config.json, model.safetensors, tokenizer.json) with trainer_state.pt for --resume and
train_log.jsonl for the loss curves. Runs on CUDA when present, else on the CPU.

Several processes: `--nproc N` launches the same command as N ranks of torchrun on this
machine; `torchrun --nproc-per-node N -m host.cli train ...` does the same by hand (and
across machines with torchrun's own options). Global batch = --batch-size x --grad-accum x N.
Under torchrun the ranks write --out in place (rank 0 writes, every checkpoint atomically).

Data efficiency: `--data-efficiency CONFIG.json` takes DeepSpeed's `data_efficiency` JSON
(curriculum learning, random-LTD; metrics other than seqlen_truncate need `tandem data
analyze` first); the log's `tokens` counts the (possibly truncated) windows trained on.
Fill-in-the-middle: `--fim-rate R --fim-spm-rate S` transforms that share of the training
documents (validation stays left-to-right); the checkpoint's tokenizer gains the sentinels,
so `tandem generate --suffix` and the server's `suffix` can infill with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch

from hw.outdir import check_output_dir, output_dir
from models.data import prepare_corpus
from models.train import TrainConfig, check_options, train
from models.train.distributed import check_device
from models.train.launch import check_nproc, run_torchrun, under_torchrun
from models.train.trainer import STATE_FILE

from ..errors import UsageError
from .options import add_dataclass_options, dataclass_from_args

NAME = "train"
HELP = "train a model on the stdlib corpus (AdamW, cosine LR, resumable)"


def add_arguments(p) -> None:
    p.add_argument("--data", required=True,
                   help="prepared corpus directory; built with default options if missing")
    p.add_argument("--out", required=True, help="run directory (checkpoint + logs)")
    p.add_argument("--force", action="store_true",
                   help="start a new run in --out even when it holds another run or files "
                   "this command did not write")
    p.add_argument("--config", help="JSON file of training options; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes (one per GPU) to train with, launched through torchrun "
                   "(default: 1)")
    p.add_argument("--stop-after", type=int, metavar="K",
                   help="end cleanly after step K's checkpoint, as a preemption would; "
                   "continue with --resume")
    p.add_argument("--peak-tflops", type=float,
                   help="peak TFLOPS of one device, for the MFU in the log (default: a table of "
                   "known GPUs; no MFU on the CPU)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar on a terminal (default: on)")
    add_dataclass_options(p, TrainConfig, "training options")


def _read_json(path: Path, what: str) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{what} {path} cannot be read as JSON ({e})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{what} {path} must hold a JSON object, not {type(raw).__name__}")
    return raw


def run(args) -> int:
    out = Path(args.out)
    base = _read_json(Path(args.config), "--config") if args.config else None
    if args.resume and base is None and (out / "train_config.json").is_file():
        base = _read_json(out / "train_config.json", "the run's")
    cfg = dataclass_from_args(TrainConfig, args, base)
    _check_run_options(cfg, args)
    inputs = [args.data, cfg.init_from or None, args.config]
    # a run to resume is identified by its trainer state (runs from before the marker have none)
    check_output_dir(args.out, NAME, inputs=inputs, force=args.force or args.resume)
    if args.resume:
        if not (out / STATE_FILE).is_file():
            raise UsageError(f"cannot resume: {out / STATE_FILE} does not exist")
    elif (out / STATE_FILE).is_file() and not args.force:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it, --force to "
                         "replace it, or pick another --out")
    if not (Path(args.data) / "meta.json").is_file():
        if under_torchrun():  # the ranks would all build it at once
            raise UsageError(f"{args.data} holds no prepared corpus; build it first with "
                             "`tandem data` (ranks under torchrun do not)")
        with output_dir(args.data, "data", flag="--data") as tmp:
            prepare_corpus(tmp)
    if args.nproc > 1:
        return _launch(args, inputs)
    if args.resume or under_torchrun():
        # the run directory continues in place: each checkpoint's trainer state is written
        # atomically, so a failure leaves the last checkpoint to resume from (under torchrun
        # every rank must see the same directory, so the ranks write --out in place too)
        result = train(cfg, args.data, out, resume=args.resume, **_train_options(args))
    else:
        result = _fresh_run(cfg, args, inputs)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result.__dict__, indent=2))
    return 0


def _train_options(args) -> dict:
    return {"device": args.device, "progress": args.progress, "stop_after": args.stop_after,
            "peak_tflops": args.peak_tflops}


def _check_run_options(cfg: TrainConfig, args) -> None:
    """The refusals that need no run directory, made before anything is launched."""
    check_nproc(args.nproc, args.device)
    if args.stop_after is not None and args.stop_after <= 0:
        raise UsageError(f"--stop-after must be a positive step number, not {args.stop_after}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise UsageError(f"--peak-tflops must be > 0, not {args.peak_tflops}")
    world = args.nproc if args.nproc > 1 else int(os.environ.get("WORLD_SIZE", "1"))
    check_options(cfg, world, check_device(args.device))


class _LaunchFailed(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _child_argv(args, out: Path, force: bool) -> list[str]:
    """This command line for each torchrun rank: the same options, --out `out`, no --nproc."""
    argv = ["train", "--data", str(args.data), "--out", str(out), "--device", args.device]
    argv += ["--config", args.config] if args.config else []
    argv += ["--resume"] if args.resume else []
    argv += ["--force"] if force else []
    argv += ["--stop-after", str(args.stop_after)] if args.stop_after is not None else []
    argv += ["--peak-tflops", repr(args.peak_tflops)] if args.peak_tflops is not None else []
    argv += [] if args.progress else ["--no-progress"]
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        flag = "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


def _launch(args, inputs) -> int:
    """--nproc N: the same command as N torchrun ranks. A new run is written into a temporary
    sibling of --out, which becomes --out when all ranks end well (or were interrupted after
    a checkpoint, to be resumed)."""
    if args.resume:
        saved = torch.load(Path(args.out) / STATE_FILE, map_location="cpu", weights_only=True,
                           mmap=True).get("world_size", 1)
        if saved != args.nproc:
            raise UsageError(f"cannot resume {args.out}: it was trained by {saved} process(es); "
                             f"resume with --nproc {saved} (the data order depends on it)")
        return run_torchrun(args.nproc, "host.cli", _child_argv(args, Path(args.out), False))
    status = 0
    try:
        with output_dir(args.out, NAME, inputs=inputs, force=args.force) as tmp:
            status = run_torchrun(args.nproc, "host.cli", _child_argv(args, tmp, True))
            if status != 0 and not (status == 130 or (tmp / STATE_FILE).is_file()):
                raise _LaunchFailed(status)
    except _LaunchFailed as e:
        return e.status
    return status


def _fresh_run(cfg, args, inputs):
    """A new run, in a temporary sibling that becomes --out when it ends. Interrupted after
    a checkpoint, the run is kept as --out, so that --resume continues it."""
    interrupted = False
    with output_dir(args.out, NAME, inputs=inputs, force=args.force) as tmp:
        try:
            result = train(cfg, args.data, tmp, resume=False, **_train_options(args))
        except KeyboardInterrupt:
            if not (tmp / STATE_FILE).is_file():
                raise
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    return result
