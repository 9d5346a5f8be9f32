"""`BoardBackend`: generation on Alveo cards through PYNQ.

The compiled model, the job descriptor and the token stream are `ClusterBackend`'s; only the
cluster differs (a `BoardCluster`, built by the factory this backend hands it). A card runs
the whole job to HALT and reports one cycle count, so every step carries the run's
`run_cycles`, and its `ms` is the run's kernel time at the configured clock spread evenly over
the tokens (the board measures no per-token time);
`time_split` is not reported.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from hw.config import AccelConfig
from hw.layout import DESC
from models.gpt2 import GPT2LMHead

from ...compiler import CompiledModel
from ...errors import UsageError
from ..api import GenerationRequest, Step
from ..cluster_backend import ClusterBackend
from .cluster import BoardCluster

__all__ = ["BoardBackend"]


class BoardBackend(ClusterBackend):
    """`ClusterBackend` on a `BoardCluster`."""

    def __init__(self, model: GPT2LMHead, config: AccelConfig, xclbin: str | Path, *,
                 pynq: ModuleType | None = None, link_cfg: str | Path | None = None,
                 timeout_s: float = 60.0, return_logits: bool = False,
                 **options: Any) -> None:
        if return_logits:
            raise UsageError("the board backend cannot return logits (the argmax runs on the "
                             "cards); use --backend isa for logits")
        self.xclbin = Path(xclbin)

        def board_cluster(compiled: CompiledModel) -> BoardCluster:
            return BoardCluster(compiled.config, xclbin, pynq=pynq, link_cfg=link_cfg,
                                timeout_s=timeout_s,
                                tokens_at=DESC.out_tokens(model.config.n_positions))

        super().__init__(model, config, name="board", cluster_factory=board_cluster, **options)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "xclbin": str(self.xclbin)}

    def _step(self, token: int, snap: dict, prev: dict, index: int, wall_s: float) -> Step:
        ms = self.config.cycles_to_ms(snap["cycles"]) / snap["tokens"]
        return Step(token, ms, {"run_cycles": int(snap["cycles"]),
                                "wall_ms": round(wall_s * 1e3, 3)})

    def _split(self, request: GenerationRequest, host: dict | None, steps_ms: list[float],
               walls_ms: list[float]) -> dict[str, Any] | None:
        """The cards report a run's cycles, not where each token's time went."""
        return None
