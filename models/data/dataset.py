"""Random-window batches over the token binaries that `prepare_corpus` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from .corpus import CorpusMeta

__all__ = ["TokenData"]


class TokenData:
    """train.bin / val.bin of a prepared corpus directory, memory-mapped."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta = self.directory / "meta.json"
        if not meta.is_file():
            raise ModelError(
                f"{self.directory} is not a prepared corpus (no meta.json); "
                "create it with `tandem data --out DIR`"
            )
        self.meta = CorpusMeta.load(meta)
        self.splits = {
            s: np.memmap(self.directory / f"{s}.bin", dtype=np.uint16, mode="r")
            for s in ("train", "val")
        }

    def batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (batch_size, block_size): windows at positions drawn from `generator`;
        y is x shifted by one token."""
        data = self.splits[split]
        if len(data) <= block_size + 1:
            raise ModelError(f"{split} split has {len(data)} tokens, fewer than block_size + 2")
        starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        rows = np.stack([data[s : s + block_size + 1] for s in starts.tolist()]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]
