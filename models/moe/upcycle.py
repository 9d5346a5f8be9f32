"""Sparse upcycling (Komatsuzaki et al., 2022): an MoE-GPT from a trained dense GPT-2.

Every expert of an MoE block is a copy of that block's dense MLP (and so is the residual MLP
of a residual MoE); attention, norms and embeddings are copied as they are; the router starts
fresh (normal, std 0.02). With top-k weights renormalised to 1 and nothing dropped, a token's
MoE output is sum_i w_i * MLP(x) = MLP(x), so the upcycled model's logits at initialisation
equal the dense model's, whatever the router says; training then lets the experts diverge.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ModelConfigError
from ..gpt2 import GPT2LMHead
from ..registry import load_model
from ..sizing import available_memory_bytes, parameter_count
from .moe_gpt import MoEGPT, MoEGPTConfig

__all__ = ["upcycle", "upcycle_bytes", "upcycle_checkpoint", "upcycle_into"]

_EXPERT_KEY = re.compile(r"^(transformer\.h\.\d+\.mlp)\.(?:experts\.\d+|residual_mlp)\.(.+)$")


@torch.no_grad()
def upcycle_into(moe: MoEGPT, dense: nn.Module) -> None:
    """Copy `dense`'s weights into `moe` (same sizes), experts from each block's MLP.

    The router and the residual coefficient keep their initialisation. Raises
    CheckpointError when the two models do not share their dense shapes.
    """
    source = dense.state_dict()
    target = moe.state_dict()
    for key, tensor in target.items():
        match = _EXPERT_KEY.match(key)
        src_key = f"{match.group(1)}.{match.group(2)}" if match else key
        if src_key not in source:
            if key.endswith((".mlp.gate.weight", ".mlp.coefficient.weight",
                             ".mlp.coefficient.bias")):
                continue  # starts fresh
            raise CheckpointError(
                f"the dense model has no tensor {src_key!r} for {key!r}; upcycle a GPT-2 "
                "checkpoint of the same sizes")
        if source[src_key].shape != tensor.shape:
            raise CheckpointError(
                f"dense tensor {src_key!r} has shape {tuple(source[src_key].shape)} but the MoE "
                f"model needs {tuple(tensor.shape)}; match n_layer/n_embd/n_head/n_positions "
                "to the dense checkpoint")
        tensor.copy_(source[src_key])


def upcycle_bytes(config: MoEGPTConfig) -> int:
    """Bytes of the upcycled model's FP32 parameters."""
    return 4 * parameter_count(config)


def check_upcycle_fits(config: MoEGPTConfig) -> None:
    """Raise ModelConfigError when the upcycled model would not fit in the memory this machine
    has free (it is built in FP32, then saved: about twice its size at the peak)."""
    need, free = 2 * upcycle_bytes(config), available_memory_bytes()
    if need > free:
        raise ModelConfigError(
            f"the upcycled model needs about {need / 1e9:.1f} GB of memory (FP32 parameters, "
            f"built then saved) but {free / 1e9:.1f} GB is free; use fewer experts")


def upcycle(dense: GPT2LMHead, num_experts: int | list[int], every: int = 2, top_k: int = 2,
            seed: int = 0, **moe_options) -> MoEGPT:
    """An MoE-GPT whose experts are copies of `dense`'s MLPs; routers drawn from `seed`.

    Defaults for inference: top-k weights renormalised to 1 and no dropping (so logits equal
    the dense model's at initialisation); `moe_options` (MoEGPTConfig `moe_*` fields) may
    change the training behaviour.
    """
    if isinstance(dense, MoEGPT) or not isinstance(dense, GPT2LMHead):
        raise CheckpointError("upcycling needs a dense GPT-2 model (model_type gpt2)")
    options = {"moe_renormalize": True, "moe_eval_drop_tokens": False, **moe_options}
    config = MoEGPTConfig.from_dense(dense.config, moe_every=every, moe_num_experts=num_experts,
                                     moe_top_k=top_k, **options)
    check_upcycle_fits(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        moe = MoEGPT(config)
    device = dense.lm_head.weight.device
    moe = moe.to(device=device, dtype=dense.lm_head.weight.dtype)
    upcycle_into(moe, dense)
    return moe.eval()


def upcycle_checkpoint(dense_dir: str | Path, out_dir: str | Path, num_experts: int,
                       every: int = 2, top_k: int = 2, seed: int = 0,
                       **moe_options) -> MoEGPT:
    """Upcycle the dense checkpoint in `dense_dir` and save it (with its tokenizer) to
    `out_dir`."""
    dense = load_model(dense_dir)
    if isinstance(dense, MoEGPT) or not isinstance(dense, GPT2LMHead):
        raise CheckpointError(
            f"{dense_dir} holds model_type {dense.config.model_type!r}; upcycle a dense gpt2 "
            "checkpoint")
    moe = upcycle(dense, num_experts, every, top_k, seed, **moe_options)
    out = Path(out_dir)
    moe.save_pretrained(out)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        if (Path(dense_dir) / name).is_file():
            shutil.copyfile(Path(dense_dir) / name, out / name)
    return moe
