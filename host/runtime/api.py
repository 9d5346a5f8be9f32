"""The runtime's types: what a generation backend takes and yields, and what a backend that
runs a compiled model needs from its devices.

- `GenerationRequest` in, one timed `Step` per token out, through a `GenerationBackend`
  (`torch`, `isa`, `rtl`, `board`: the registry is `host.runtime.backends`).
- `DeviceCluster`: the devices a compiled model runs on. `hw.isasim.IsaCluster` (the
  instruction-level simulator), `host.runtime.rtl.RtlCluster` (the RTL under simulation) and
  `host.runtime.board.BoardCluster` (Alveo cards through PYNQ) all provide it, so
  `ClusterBackend` generates on any of them through this interface alone; a
  `ClusterFactory` builds one for a compiled model.

This module imports nothing of the runtime's, so backends, clusters and their users can all
depend on it without depending on each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from hw.config import AccelConfig
    from hw.hbm import HbmImage
    from hw.isa import Instr

    from ..compiler import CompiledModel

__all__ = [
    "ClusterDevice",
    "ClusterFactory",
    "DeviceCluster",
    "GenerationBackend",
    "GenerationRequest",
    "Step",
]


@dataclass
class GenerationRequest:
    prompt_ids: list[int]  # the prompt, already tokenized
    max_new_tokens: int  # tokens to generate
    temperature: float = 0.0  # 0 is greedy
    top_k: int | None = None  # sample among the k most likely; None is all
    seed: int = 0  # sampling seed


@dataclass
class Step:
    token: int  # the generated id
    ms: float  # wall time from the previous token (or the request) to this one
    extra: dict[str, Any] = field(default_factory=dict)  # backend figures (cycles, breakdown)

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "ms": round(self.ms, 6), **self.extra}


class GenerationBackend(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """Facts for the output record: which device ran, at what clock, etc."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[Step]: ...


@runtime_checkable
class ClusterDevice(Protocol):
    """One device of a `DeviceCluster`, as the backend reads it after (or during) a run."""

    #: TOKOUT writes of the run: (byte address, value, counter snapshot with at least
    #: `cycles`), in order
    events: list[tuple[int, int, dict]]
    #: when a list, the devices append the vector each argmax of the LM head reads (the
    #: logits); None records nothing. Only the `isa` simulator can fill it.
    argmax_inputs: list | None
    #: the ARGMAX whose inputs are the logits (an MoE program has router ARGMAXes too); None
    #: records every ARGMAX
    argmax_pc: int | None


@runtime_checkable
class DeviceCluster(Protocol):
    """D devices joined in a ring, running one compiled program each.

    The host's side of a job: `load` the programs and HBM images, `write_i32` the job
    descriptor into every device's memory (`image(d)` for bulk writes such as a KV cache),
    `start`, then drive `run()` to completion (it yields whenever new TOKOUT `events` may have
    appeared on the devices, at least once) or `wait()`, and read results back with
    `read_i32` / `image` and `counters()`. Memory written before `start` is what the devices
    see; memory read after the run is what they left.
    """

    kind: str  #: the backend name the cluster serves: isa, rtl or board
    config: AccelConfig

    @property
    def devices(self) -> Sequence[ClusterDevice]: ...

    def load(self, programs: list[list[Instr]], images: list[HbmImage] | None) -> None: ...

    def write_i32(self, device: int, offset: int, values) -> None: ...

    def read_i32(self, device: int, offset: int, n: int) -> np.ndarray: ...

    def image(self, device: int) -> HbmImage: ...

    def start(self) -> None: ...

    def run(self) -> Iterator[None]: ...

    def wait(self) -> None: ...

    def counters(self) -> dict: ...


#: Builds the (unloaded) cluster a compiled model runs on; the caller loads it. It takes the
#: compiled model because a cluster may be sized from it (the RTL's memory models hold the
#: plan's whole HBM extent).
ClusterFactory = Callable[["CompiledModel"], DeviceCluster]
