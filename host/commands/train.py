"""Train a GPT-2 language model on a prepared corpus (see `tandem data`).

Every --eval-interval steps the run directory becomes a loadable HF-format checkpoint
(config.json, model.safetensors, tokenizer.json) with trainer_state.pt for --resume and
train_log.jsonl for the loss curves. Runs on CUDA when present, else on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.data import prepare_corpus
from models.train import TrainConfig, train

from .options import add_dataclass_options, dataclass_from_args

NAME = "train"
HELP = "train a model on the stdlib corpus (AdamW, cosine LR, resumable)"


def add_arguments(p) -> None:
    p.add_argument("--data", required=True,
                   help="prepared corpus directory; built with default options if missing")
    p.add_argument("--out", required=True, help="run directory (checkpoint + logs)")
    p.add_argument("--config", help="JSON file of training options; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    add_dataclass_options(p, TrainConfig, "training options")


def run(args) -> int:
    base = json.loads(Path(args.config).read_text()) if args.config else None
    if args.resume and base is None and (Path(args.out) / "train_config.json").is_file():
        base = json.loads((Path(args.out) / "train_config.json").read_text())
    cfg = dataclass_from_args(TrainConfig, args, base)
    if not (Path(args.data) / "meta.json").is_file():
        prepare_corpus(args.data)
    result = train(cfg, args.data, args.out, resume=args.resume, device=args.device)
    print(json.dumps(result.__dict__, indent=2))
    return 0
