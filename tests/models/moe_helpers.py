"""Shared pieces of the MoE tests: tiny configs, a tiny prepared corpus, and a plain-loop
reference of DeepSpeed's gating rules written independently of `models.moe.gates`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers import models as tok_models

from models.config import GPT2Config
from models.data import CorpusMeta


def tiny_config(**overrides) -> GPT2Config:
    fields = {"vocab_size": 64, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 2}
    return GPT2Config(**{**fields, **overrides})


def tiny_corpus(directory: Path, vocab_size: int = 64, tokens: int = 40_000) -> Path:
    """A prepared-corpus directory (meta.json, train/val.bin, tokenizer.json) of patterned
    random tokens: short runs of an arithmetic progression, so there is something to learn."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", tokens), ("val", tokens // 8)):
        ids = []
        while len(ids) < n:
            start, step = rng.integers(1, vocab_size), rng.integers(1, 4)
            ids.extend((start + step * i) % (vocab_size - 1) + 1 for i in range(8))
            ids.append(0)
        np.asarray(ids[:n], dtype=np.uint16).tofile(directory / f"{split}.bin")
        out[split] = n
    Tokenizer(tok_models.WordLevel({"<|endoftext|>": 0}, unk_token="<|endoftext|>")).save(
        str(directory / "tokenizer.json"))
    CorpusMeta(python="test", root="synthetic", vocab_size=vocab_size, val_fraction=0.1,
               files={"train": 1, "val": 1}, bytes=dict(out), tokens=out,
               file_list_sha256="0" * 64, eot_id=0).save(directory / "meta.json")
    return directory


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
