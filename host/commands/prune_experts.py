"""Expert pruning for inference: keep each MoE block's N most-used experts.

Usage is counted on calibration batches drawn from a prepared corpus (`tandem data`) with the
model's inference routing; the pruned checkpoint keeps the experts (and router columns) of
the N largest counts, in their original order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import models
from hw.outdir import check_output_dir, output_dir
from models.data import TokenData
from models.moe import MoEGPT, expert_usage, prune_experts

from ..errors import UsageError
from .options import add_output_arguments

NAME = "prune-experts"
HELP = "keep the N most-used experts of an MoE-GPT checkpoint, measured on a calibration set"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="MoE-GPT checkpoint directory")
    p.add_argument("--data", required=True, help="prepared corpus directory (`tandem data`)")
    add_output_arguments(p, "directory to write the pruned checkpoint to")
    p.add_argument("--keep", type=int, required=True, help="experts to keep per MoE block")
    p.add_argument("--split", default="train", choices=("train", "val"),
                   help="calibration split (default train)")
    p.add_argument("--batches", type=int, default=8, help="calibration batches (default 8)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per batch (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")


def run(args) -> int:
    check_output_dir(args.out, NAME, inputs=[args.model, args.data], force=args.force)
    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in 0..2**64-1, not {args.seed}")
    for name in ("batches", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not "
                             f"{getattr(args, name)}")
    model = models.load_model(args.model)
    if not isinstance(model, MoEGPT):
        raise UsageError(f"{args.model} is not an MoE-GPT checkpoint (model_type moe_gpt2)")
    data = TokenData(args.data)
    if data.meta.vocab_size != model.config.vocab_size:
        raise UsageError(f"corpus {args.data} has a {data.meta.vocab_size}-token vocabulary but "
                         f"the model has {model.config.vocab_size}; calibrate on its own corpus")
    generator = torch.Generator().manual_seed(args.seed)
    block = model.config.n_positions
    batches = [data.batch(args.split, args.batch_size, block, generator)[0]
               for _ in range(args.batches)]
    usage = expert_usage(model, batches)
    pruned, kept = prune_experts(model, args.keep, usage)
    with output_dir(args.out, NAME, inputs=[args.model, args.data], force=args.force) as tmp:
        pruned.save_pretrained(tmp)
        tok = Path(args.model) / "tokenizer.json"
        if tok.is_file():
            shutil.copyfile(tok, tmp / "tokenizer.json")
    print(json.dumps({"out": args.out, "kept": {str(b): e for b, e in kept.items()},
                      "usage": {str(b): u.tolist() for b, u in usage.items()}}))
    return 0
