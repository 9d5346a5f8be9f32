"""Expert pruning for inference: keep each MoE block's N most-used experts.

Usage is measured on a calibration set with the model's own inference routing (eval mode:
top-k, nothing dropped) as the number of tokens routed to each expert. A pruned block keeps
the N most-used experts (ties to the lower index) in their original order, with the matching
columns of the router. Because top-k weights are renormalised over the chosen experts and a
softmax ratio p_i / p_j does not depend on the other experts, a token whose top-k experts all
survive is routed and weighted exactly as before; only tokens that used a pruned expert change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import Tensor

from ..errors import ModelConfigError
from .moe_gpt import MoEGPT

__all__ = ["expert_usage", "prune_experts"]


@torch.no_grad()
def expert_usage(model: MoEGPT, batches: Iterable[Tensor]) -> dict[int, Tensor]:
    """Tokens routed to each expert of each MoE block over `batches` of input ids (B, T),
    with inference routing: {block index: counts (E,)}."""
    was_training = model.training
    model.eval()
    usage: dict[int, Tensor] = {}
    for ids in batches:
        model(ids.to(model.lm_head.weight.device))
        for (block, _), counts in zip(model.moe_blocks(), model.last_aux.exp_counts, strict=True):
            usage[block] = usage.get(block, 0) + counts.cpu()
    model.train(was_training)
    if not usage:
        raise ModelConfigError("the calibration set is empty; give at least one batch")
    return usage


def _kept(counts: Tensor, keep: int) -> list[int]:
    order = sorted(range(len(counts)), key=lambda e: (-int(counts[e]), e))
    return sorted(order[:keep])


@torch.no_grad()
def prune_experts(model: MoEGPT, keep: int, usage: dict[int, Tensor]
                  ) -> tuple[MoEGPT, dict[int, list[int]]]:
    """A copy of `model` whose MoE blocks keep their `keep` most-used experts (blocks with
    fewer keep all). Returns the pruned model and, per block, the kept original expert ids."""
    cfg = model.config
    if not isinstance(keep, int) or keep < cfg.moe_top_k:
        raise ModelConfigError(
            f"keep ({keep}) must be an integer of at least moe_top_k ({cfg.moe_top_k})")
    blocks = [b for b, _ in model.moe_blocks()]
    missing = [b for b in blocks if b not in usage]
    if missing:
        raise ModelConfigError(f"usage lacks MoE block {missing[0]}; measure it with expert_usage")
    kept = {b: _kept(usage[b], min(keep, cfg.experts_in(b))) for b in blocks}
    counts = [len(kept[b]) for b in blocks]
    new_counts: int | list[int] = counts[0] if len(set(counts)) == 1 else counts
    config = dataclasses.replace(cfg, moe_num_experts=new_counts)
    pruned = MoEGPT(config).to(model.lm_head.weight)
    state = model.state_dict()
    out = {}
    for key in pruned.state_dict():
        parts = key.split(".")
        if len(parts) > 4 and parts[3] == "mlp" and int(parts[2]) in kept:
            block = int(parts[2])
            if parts[4] == "experts":
                parts[5] = str(kept[block][int(parts[5])])
            elif parts[4] == "gate":
                out[key] = state[key][:, kept[block]].clone()
                continue
        out[key] = state[".".join(parts)].clone()
    pruned.load_state_dict(out)
    return pruned.train(model.training), kept
