"""Train a GPT-2 language model on a prepared corpus (see `tandem data`).

Every --eval-interval steps the run directory becomes a loadable HF-format checkpoint
(config.json, model.safetensors, tokenizer.json) with trainer_state.pt for --resume and
train_log.jsonl for the loss curves. Runs on CUDA when present, else on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

from hw.outdir import check_output_dir, output_dir
from models.data import prepare_corpus
from models.train import TrainConfig, train
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
        with output_dir(args.data, "data", flag="--data") as tmp:
            prepare_corpus(tmp)
    if args.resume:
        # the run directory continues in place: each checkpoint's trainer state is written
        # atomically, so a failure leaves the last checkpoint to resume from
        result = train(cfg, args.data, out, resume=True, device=args.device)
    else:
        result = _fresh_run(cfg, args, inputs)
    print(json.dumps(result.__dict__, indent=2))
    return 0


def _fresh_run(cfg, args, inputs):
    """A new run, in a temporary sibling that becomes --out when it ends. Interrupted after
    a checkpoint, the run is kept as --out, so that --resume continues it."""
    interrupted = False
    with output_dir(args.out, NAME, inputs=inputs, force=args.force) as tmp:
        try:
            result = train(cfg, args.data, tmp, resume=False, device=args.device)
        except KeyboardInterrupt:
            if not (tmp / STATE_FILE).is_file():
                raise
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    return result
