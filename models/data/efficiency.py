"""A DeepSpeed `data_efficiency` config, ready for a training loop: three calls.

    de = DataEfficiency.from_file("ds_config.json", data, block_size, n_layer)
    de.attach(model)                         # random-LTD hook, when enabled
    for step in ...:
        de.begin_step(step)                  # random-LTD kept count and draws of this step
        x, y = de.batch(step, batch_size, generator)   # curriculum windows (or plain ones)

Curriculum metrics other than `seqlen_truncate` read the analyzer's index of `data` for this
block size (`tandem data analyze --data DIR --block-size B`). With curriculum learning off,
`batch` is `data.batch("train", ...)`: the trainer's own random windows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelConfigError
from ..random_ltd import RandomLTD, attach
from .analyzer import DifficultyIndex
from .curriculum import CurriculumSampler, DataEfficiencyConfig, load_data_efficiency
from .dataset import TokenData

__all__ = ["DataEfficiency"]


class DataEfficiency:
    def __init__(self, config: DataEfficiencyConfig, data: TokenData, block_size: int,
                 n_layer: int, rank: int = 0) -> None:
        self.config = config
        self.data = data
        self.block_size = block_size
        self.raw: dict | None = None  # the JSON it came from, when the caller keeps it
        self.sampler: CurriculumSampler | None = None
        self.ltd: RandomLTD | None = None
        if config.random_ltd.enabled:
            if config.random_ltd.max_value != block_size:
                raise ModelConfigError(
                    f"random_ltd max_value ({config.random_ltd.max_value}) must be the full "
                    f"sequence, the block size ({block_size})")
            # per-rank draws: data-parallel ranks drop different tokens of different data
            self.ltd = RandomLTD.from_config(config.random_ltd, n_layer,
                                             seed=config.seed + 104_729 * rank)
        if config.curriculum.enabled:
            metrics = config.curriculum.metrics
            needs_index = any(m.metric != "seqlen_truncate" for m in metrics)
            source = DifficultyIndex(data.directory, block_size) if needs_index else data
            for m in metrics:
                if m.metric == "seqlen_truncate" and m.schedule.max_difficulty > block_size:
                    raise ModelConfigError(
                        f"seqlen_truncate's max_difficulty ({m.schedule.max_difficulty}) exceeds "
                        f"the block size ({block_size})")
            self.sampler = CurriculumSampler(source, metrics, block_size)

    @classmethod
    def from_file(cls, path: str | Path, data: TokenData, block_size: int, n_layer: int,
                  rank: int = 0) -> DataEfficiency:
        return cls(load_data_efficiency(path), data, block_size, n_layer, rank)

    def attach(self, model: nn.Module) -> None:
        if self.ltd is not None:
            attach(model, self.ltd)

    def begin_step(self, step: int) -> None:
        if self.ltd is not None:
            self.ltd.begin_step(step)

    def batch(self, step: int, batch_size: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (batch_size, T) for trainer step `step`; T < block_size early in a
        seqlen_truncate curriculum, so count tokens with x.numel()."""
        if self.sampler is None:
            return self.data.batch("train", batch_size, self.block_size, generator)
        return self.sampler.batch(step, batch_size, generator)
