"""Sparse upcycling: turn a dense GPT-2 checkpoint into an MoE-GPT checkpoint.

Every expert of an MoE block starts as a copy of the dense block's MLP and each router starts
fresh. The result routes with top-k weights renormalised to 1 and drops no tokens at
inference, so its logits equal the dense model's until it is trained (`tandem train
--init-from OUT` with the same --moe-* options continues from it).
"""

from __future__ import annotations

import json

from hw.outdir import output_dir
from models.moe import upcycle_checkpoint

from ..errors import UsageError
from .options import add_output_arguments

NAME = "upcycle"
HELP = "make an MoE-GPT checkpoint from a dense GPT-2 one (experts copied from its MLPs)"


def add_arguments(p) -> None:
    p.add_argument("--from", dest="dense", required=True, help="dense GPT-2 checkpoint directory")
    add_output_arguments(p, "directory to write the MoE-GPT checkpoint to")
    p.add_argument("--experts", type=int, required=True, help="experts per MoE block")
    p.add_argument("--every", type=int, default=2,
                   help="block i is MoE when (i + 1) %% every == 0 (default 2)")
    p.add_argument("--top-k", type=int, default=2, help="experts per token (default 2)")
    p.add_argument("--capacity-factor", type=float, default=1.0,
                   help="training capacity factor (default 1.0; inference never drops)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh routers")


def run(args) -> int:
    if args.experts < 1:
        raise UsageError(f"--experts must be at least 1, not {args.experts}")
    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in 0..2**64-1, not {args.seed}")
    with output_dir(args.out, NAME, inputs=[args.dense], force=args.force) as tmp:
        model = upcycle_checkpoint(args.dense, tmp, args.experts, args.every, args.top_k,
                                   args.seed, moe_capacity_factor=args.capacity_factor)
    cfg = model.config
    print(json.dumps({"out": args.out, "moe_blocks": cfg.moe_layers,
                      "experts": cfg.moe_num_experts, "top_k": cfg.moe_top_k,
                      "parameters": sum(p.numel() for p in model.parameters())}))
    return 0
