"""Training throughput: model FLOPs per token, and model FLOPs utilisation (MFU).

MFU = achieved model FLOPs per second / the hardware's peak, where the model FLOPs of a
training token are 6 x (active parameters) for the matrix products (forward 2, backward 4)
plus 12 x n_layer x n_embd x block_size for attention scores and values (the PaLM count,
Chowdhery et al. 2022, appendix B). Position embeddings are no products and are left out; a
tied LM head is counted once, as its matrix product. In an MoE block only top_k of E experts
run per token, so expert parameters count k/E. Recomputation and padding are not model
FLOPs, so MFU does not credit them.

The peak comes from `--peak-tflops` or, on CUDA, from the table below (dense BF16/FP16
tensor-core TFLOPS, no sparsity, from the vendors' data sheets). Without either there is no
MFU: the trainer logs none rather than guess.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PEAK_TFLOPS", "flops_per_token", "peak_tflops_for"]

#: (substring of torch.cuda.get_device_name, dense BF16/FP16 TFLOPS); the first match wins,
#: so more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("V100", 125.0),
    ("T4", 65.0),
)


def peak_tflops_for(device: torch.device) -> float | None:
    """The table's peak for the CUDA device, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops
    return None


def flops_per_token(model: nn.Module, n_layer: int, n_embd: int, block_size: int) -> float:
    """Model FLOPs of one trained token (forward and backward) of the full (unsharded) model."""
    from ..moe.layer import MoE

    expert_params = 0.0
    expert_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, MoE):
            params = list(module.experts.parameters())
            expert_ids.update(id(p) for p in params)
            held = sum(p.numel() for p in params)  # this rank's share under expert parallelism
            expert_params += held * module.ep_size * module.k / module.num_experts
    dense = sum(p.numel() for name, p in model.named_parameters()
                if id(p) not in expert_ids and "wpe" not in name)
    return 6.0 * (dense + expert_params) + 12.0 * n_layer * n_embd * block_size
