"""How big a model is, and how much memory this machine has free: the checks that refuse a
job before it allocates what it cannot hold (`tandem upcycle`, `tandem train`)."""

from __future__ import annotations

import os

__all__ = ["available_memory_bytes", "parameter_count", "training_bytes"]


def parameter_count(config) -> int:
    """Parameters of the GPT-2 or MoE-GPT that `config` describes, counted without building
    it: embeddings, every block (MoE blocks with their experts, routers and residual MLP) and
    an untied head."""
    d, inner = config.n_embd, config.inner_dim
    mlp = d * inner + inner + inner * d + d  # c_fc and c_proj, weights and biases
    block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d)  # two LayerNorms, c_attn, c_proj
    params = config.vocab_size * d + config.n_positions * d + 2 * d + config.n_layer * block
    if not config.tie_word_embeddings:
        params += config.vocab_size * d
    moe = set(getattr(config, "moe_layers", ()))
    params += (config.n_layer - len(moe)) * mlp  # dense blocks (no loop: n_layer may be huge)
    for i in moe:
        experts = config.experts_in(i)
        params += experts * mlp + d * experts  # experts and router
        if config.moe_use_residual:
            params += mlp + 2 * d + 2
    return params


def training_bytes(config, batch_size: int, block_size: int) -> int:
    """A lower estimate of the memory one process needs to train `config` on micro-batches of
    `batch_size` x `block_size` tokens in FP32 with AdamW: weights, gradients and the two
    moments (16 bytes a parameter), the activations kept for the backward (per token and
    layer about 34 n_embd + 5 n_head block_size values, Korthikanti et al. 2022, at 4 bytes)
    and the logits with their gradient."""
    tokens = batch_size * block_size
    per_layer = 34 * config.n_embd + 5 * config.n_head * block_size
    activations = 4 * tokens * config.n_layer * per_layer
    logits = 2 * 4 * tokens * config.vocab_size
    return 16 * parameter_count(config) + activations + logits


def available_memory_bytes() -> int:
    """Physical memory free now; a huge number where the system does not say (no guess)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62
