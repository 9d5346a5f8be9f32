"""`RtlBackend`: generation on the RTL kernels under simulation, reporting the cycles the RTL
took in the same per-step JSON as the `isa` backend (`cycles`, `breakdown`, `hbm_utilization`,
`ms` at the configured clock, `wall_ms`).

The compiled model, the job descriptor and the token stream are `ClusterBackend`'s; only the
cluster differs (an `RtlCluster`, built by the factory this backend hands it). The step
figures are measured: the cycle the RTL completed each TOKOUT, and the breakdown of the RTL's
own instruction timeline (`timing.attribute`), whose category labels come from an `isa` run of
the same job (it also supplies the bytes moved, which are the same instructions' operands).
"""

from __future__ import annotations

import sys
from typing import Any

from hw.config import AccelConfig
from models.gpt2 import GPT2LMHead

from ...compiler import CompiledModel
from ...errors import UsageError
from ..cluster_backend import ClusterBackend
from .cluster import RtlCluster

__all__ = ["RtlBackend"]


class RtlBackend(ClusterBackend):
    """`ClusterBackend` on an `RtlCluster` (Verilator by default)."""

    def __init__(self, model: GPT2LMHead, config: AccelConfig, *, simulator: str = "verilator",
                 progress: bool | None = None, return_logits: bool = False,
                 **options: Any) -> None:
        if return_logits:
            raise UsageError("the rtl backend cannot return logits (the argmax runs inside the "
                             "simulated devices); use --backend isa for logits")
        self.simulator = simulator
        progress = sys.stderr.isatty() if progress is None else progress

        def rtl_cluster(compiled: CompiledModel) -> RtlCluster:
            # the memory models hold the plan's whole extent (the KV cache beyond the images)
            extent = max(r.offset + r.size for r in compiled.plan.hbm.values())
            return RtlCluster(compiled.config, simulator=simulator, attribute=True,
                              hbm_bytes=extent, progress=progress)

        super().__init__(model, config, name="rtl", cluster_factory=rtl_cluster, **options)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "simulator": self.simulator}
