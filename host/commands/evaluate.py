"""Measure a checkpoint's loss and perplexity over every token of a corpus split."""

from __future__ import annotations

import json

import torch

import models
from models.data import TokenData
from models.train import evaluate_split

NAME = "eval"
HELP = "measure a model's val loss and perplexity on a prepared corpus"


def add_arguments(p) -> None:
    p.add_argument("--model", default=str(models.default_model_dir()),
                   help="HF-format checkpoint directory (default: the shipped model)")
    p.add_argument("--data", required=True, help="prepared corpus directory (`tandem data`)")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    model = models.load_model(args.model, device="cuda" if torch.cuda.is_available() else "cpu")
    data = TokenData(args.data)
    if data.meta.vocab_size != model.config.vocab_size:
        raise models.ModelError(
            f"corpus {args.data} has a {data.meta.vocab_size}-token vocabulary but the model "
            f"has {model.config.vocab_size}; evaluate on the corpus the model was trained on"
        )
    result = {"model": args.model, "split": args.split,
              **evaluate_split(model, data, args.split, progress=not args.json)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.split} loss {result['loss']:.4f} nats/token, perplexity "
              f"{result['perplexity']:.2f} over {result['tokens']} tokens")
    return 0
