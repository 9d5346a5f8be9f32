"""Shared pieces of the MoE tests: a plain-loop reference of DeepSpeed's gating rules written
independently of `models.moe.gates`. (Tiny configs and corpora come from `models.testing`.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def logits_for(probs: list[list[float]]) -> torch.Tensor:
    """Router logits whose softmax is `probs` (rows sum to 1)."""
    return torch.tensor(probs, dtype=torch.float32).log()


def reference_gating(logits: torch.Tensor, k: int, capacity_factor: float, min_capacity: int,
                     drop_tokens: bool, policy: str, order: str, renormalize: bool,
                     aux_first_only: bool):
    """DeepSpeed's gating rules token by token, with Python loops: (l_aux, combine, dispatch,
    exp_counts). Choices are the plain top-k (no noise); `order` is "choice" (all first
    choices before any second) or "token"; `policy` is "position" or "probs"."""
    S, E = logits.shape
    probs = torch.softmax(logits.double(), dim=1).tolist()
    choices = [sorted(range(E), key=lambda e, s=s: -probs[s][e])[:k] for s in range(S)]
    assignments = [(s, j, choices[s][j]) for s in range(S) for j in range(k)]
    if order == "choice":
        assignments.sort(key=lambda a: (a[1], a[0]))
    counts = [sum(1 for a in assignments if a[2] == e) for e in range(E)]
    if drop_tokens:
        C = max(math.ceil(round(k * capacity_factor * S / E, 9)), min_capacity)
    else:
        C = max(max(counts), 1)
    kept = set()
    for e in range(E):
        mine = [a for a in assignments if a[2] == e]
        if policy == "probs":
            mine = sorted(mine, key=lambda a: -probs[a[0]][e])
        kept.update(mine[:C])
    slots, seen = {}, [0] * E
    for a in assignments:
        if a in kept:
            slots[a] = seen[a[2]]
            seen[a[2]] += 1
    combine = torch.zeros(S, E, C, dtype=torch.float64)
    for s in range(S):
        mine = [a for a in kept if a[0] == s]
        total = sum(probs[s][a[2]] for a in mine)
        for a in mine:
            w = probs[s][a[2]]
            combine[s, a[2], slots[a]] = w / total if renormalize else w
    me = [sum(probs[s][e] for s in range(S)) / S for e in range(E)]
    counted = [a for a in assignments if not aux_first_only or a[1] == 0]
    ce = [sum(1 for a in counted if a[2] == e) / S for e in range(E)]
    per_token = 1 if aux_first_only else k
    l_aux = E * sum(m * c for m, c in zip(me, ce, strict=True)) / per_token
    return l_aux, combine, combine > 0, torch.tensor(counts)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path
