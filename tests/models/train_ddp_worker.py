"""The body of one process of the multi-process trainer tests (tests/models/test_train_ddp.py):
join a gloo group through a file store, then run `train()` once per requested case."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from models.train import TrainConfig, train


def run(rank: int, world: int, store: str, corpus: str, cases: list[tuple[str, dict, dict]]):
    """cases: (run directory, TrainConfig options, extra train() keyword arguments)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        for out, options, kwargs in cases:
            train(TrainConfig(**options), corpus, out, device="cpu", progress=False, **kwargs)
    finally:
        dist.destroy_process_group()
