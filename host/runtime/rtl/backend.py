"""`RtlBackend`: generation on the RTL kernels under simulation, reporting the cycles the RTL
took in the same per-step JSON as the `isa` backend (`cycles`, `breakdown`, `hbm_utilization`,
`ms` at the configured clock, `wall_ms`).

The compiled model, the job descriptor and the token stream are `AcceleratorBackend`'s; only
the cluster differs. The step figures are measured: the cycle the RTL completed each TOKOUT,
and the breakdown of the RTL's own instruction timeline (`timing.attribute`), whose category
labels come from an `isa` run of the same job (it also supplies the bytes moved, which are the
same instructions' operands).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from hw.config import AccelConfig

from ...errors import UsageError
from ..accelerator import AcceleratorBackend
from .cluster import RtlCluster

__all__ = ["RtlBackend"]


class RtlBackend(AcceleratorBackend):
    """`AcceleratorBackend` on an `RtlCluster` (Verilator by default)."""

    def __init__(self, model: nn.Module, config: AccelConfig, *, simulator: str = "verilator",
                 progress: bool | None = None, return_logits: bool = False,
                 **options: Any) -> None:
        if return_logits:
            raise UsageError("the rtl backend cannot return logits (the argmax runs inside the "
                             "simulated devices); use --backend isa for logits")
        super().__init__(model, config, name="rtl", **options)
        self.simulator = simulator
        extent = max(r.offset + r.size for r in self.compiled.plan.hbm.values())
        self.cluster = RtlCluster(config, simulator=simulator, attribute=True, hbm_bytes=extent,
                                  progress=sys.stderr.isatty() if progress is None else progress)
        self.cluster.load(self.compiled.programs, self.compiled.images)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "simulator": self.simulator}
