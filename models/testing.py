"""Small random checkpoints and synthetic corpora for tests, benchmarks and calibration runs.

Every builder is seeded, so the same arguments give the same bytes: the accelerator tests
compare backends on these models, and `scripts/calibrate_timing.py` fits the timing model on
one of them. Weights are scaled up from the default initialisation so logits are decisive, as
a trained model's are (a random model's near-ties would make greedy tokens FP16 coin flips).

This module imports only `models` and the libraries `models` stands on; what needs an
accelerator backend (the golden comparison) stays with the tests that use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from tokenizers import models as tok_models

from .config import GPT2Config
from .data import CorpusMeta
from .moe import MoEGPT, MoEGPTConfig
from .registry import load_model

__all__ = ["analysis_corpus", "hf_checkpoint", "moe_checkpoint", "patterned_corpus",
           "tiny_config"]


def hf_checkpoint(directory, *, vocab: int, n_pos: int, n_embd: int, n_layer: int,
                  n_head: int, seed: int = 0, scale: float = 3.0, tied: bool = True):
    """A random HF GPT-2 with non-trivial biases and LayerNorms (noise of std 0.1 added) and
    every other weight multiplied by `scale`, saved to `directory` and loaded back."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=n_pos, n_embd=n_embd,
                                  n_layer=n_layer, n_head=n_head, bos_token_id=0,
                                  eos_token_id=0, tie_word_embeddings=tied)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.mul_(scale)
    hf.save_pretrained(directory)
    return load_model(directory)


def moe_checkpoint(directory, *, vocab: int = 97, n_pos: int = 32, n_embd: int = 32,
                   n_layer: int = 2, n_head: int = 2, n_inner: int | None = None,
                   experts: int = 4, top_k: int = 1, moe_every: int = 1,
                   renormalize: bool = True, seed: int = 0, gate_std: float = 1.0):
    """A random MoE-GPT saved to `directory` and loaded back. Weights are scaled as in
    `hf_checkpoint`; every expert has its own initialisation, and the router is wide (std
    `gate_std`) so routing decisions are not FP16 coin flips."""
    torch.manual_seed(seed)
    config = MoEGPTConfig(vocab_size=vocab, n_positions=n_pos, n_embd=n_embd, n_layer=n_layer,
                          n_head=n_head, n_inner=n_inner, moe_every=moe_every,
                          moe_num_experts=experts, moe_top_k=top_k,
                          moe_renormalize=renormalize, bos_token_id=0, eos_token_id=0)
    model = MoEGPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                p.normal_(0.0, gate_std)
            elif name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.mul_(3.0)
    model.save_pretrained(directory)
    return load_model(directory)


def tiny_config(**overrides) -> GPT2Config:
    """A GPT-2 config small enough to train in a test (64 tokens, 2 blocks of 32 wide)."""
    fields = {"vocab_size": 64, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 2}
    return GPT2Config(**{**fields, **overrides})


def patterned_corpus(directory: Path, *, vocab_size: int = 64, tokens: int = 40_000) -> Path:
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


def analysis_corpus(directory: Path, *, train: list[int] | None = None,
                    val: list[int] | None = None, vocab_size: int = 16,
                    eot: int = 0) -> tuple[list[int], list[int]]:
    """A prepared-corpus directory (meta.json, train.bin, val.bin) holding the given token
    streams, for the data analyzer and the curriculum sampler; by default ~1000 seeded tokens
    in documents of 1..40 tokens, each ended by `eot`. Returns (train, val)."""
    rng = np.random.default_rng(0)
    if train is None:
        docs = [[*rng.integers(1, vocab_size, size=rng.integers(1, 40)).tolist(), eot]
                for _ in range(50)]
        train = [t for d in docs for t in d]
    if val is None:
        val = rng.integers(0, vocab_size, size=50).tolist()
    directory.mkdir(parents=True, exist_ok=True)
    np.asarray(train, dtype=np.uint16).tofile(directory / "train.bin")
    np.asarray(val, dtype=np.uint16).tofile(directory / "val.bin")
    CorpusMeta(python="3", root="synthetic", vocab_size=vocab_size, val_fraction=0.1,
               files={"train": 1, "val": 1}, bytes={"train": 0, "val": 0},
               tokens={"train": len(train), "val": len(val)}, file_list_sha256="0" * 64,
               eot_id=eot).save(directory / "meta.json")
    return train, val
