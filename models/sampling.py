"""Next-token selection: greedy, temperature and top-k sampling, reproducible for a seed."""

from __future__ import annotations

import math

import torch

__all__ = ["sample_next"]

#: the smallest positive FP32 value (subnormal); a temperature below it rounds to 0
_FP32_TINIEST = float(torch.finfo(torch.float32).smallest_normal) * 2.0**-23


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick one token id from `logits` (vocab_size,).

    temperature == 0 is greedy (argmax, lowest id on ties, as the accelerator's argmax does).
    The draw happens on the CPU with `generator`, so a seed gives the same tokens on any device.
    """
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, not {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, not {top_k}")
    logits = logits.detach().float().cpu()
    if temperature < _FP32_TINIEST:  # 0, or so small it is 0 in FP32: the greedy limit
        return int(torch.argmax(logits))
    # shifted so the largest is 0 first: a tiny temperature then sends the others to -inf
    # (probability 0) instead of overflowing every logit to inf (NaN probabilities)
    logits = (logits - logits.max()) / temperature  # (vocab_size,)
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
