"""Token generation behind one interface: a request in, one timed `Step` per token out."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import UsageError

__all__ = [
    "BACKENDS",
    "GenerationBackend",
    "GenerationRequest",
    "Step",
    "TorchBackend",
    "make_backend",
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


class TorchBackend:
    """The golden PyTorch model, on CUDA when present, else on the CPU."""

    name = "torch"

    def __init__(self, model: nn.Module, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device}

    def stream(self, request: GenerationRequest) -> Iterator[Step]:
        tokens = self.model.stream(request.prompt_ids, request.max_new_tokens,
                                   temperature=request.temperature, top_k=request.top_k,
                                   seed=request.seed)
        last = time.perf_counter()
        for token in tokens:
            if self.device == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            yield Step(token, (now - last) * 1e3)
            last = now


def _isa_backend(model: nn.Module, config: str = "tiny", devices: int = 1,
                 return_logits: bool = False, prefill: str = "fpga",
                 prefill_numerics: str = "torch", **_) -> GenerationBackend:
    from hw.config import load_config

    from .accelerator import AcceleratorBackend

    return AcceleratorBackend(model, load_config(config, devices), return_logits=return_logits,
                              prefill=prefill, prefill_numerics=prefill_numerics)


def _rtl_backend(model: nn.Module, config: str = "tiny", devices: int = 1,
                 return_logits: bool = False, **options) -> GenerationBackend:
    from hw.config import load_config

    from .rtl import RtlBackend

    options = {k: options[k] for k in ("prefill", "prefill_numerics") if k in options}
    return RtlBackend(model, load_config(config, devices), return_logits=return_logits,
                      **options)


def _board_backend(model: nn.Module, config: str = "tiny", devices: int = 1,
                   return_logits: bool = False, xclbin: str | None = None,
                   **options) -> GenerationBackend:
    from hw.config import load_config

    from .board import BoardBackend

    if xclbin is None:
        raise UsageError("the board backend needs the kernel's --xclbin (built by `python -m "
                         "hw.vitis --config u280 --out DIR` and DIR/build.sh)")
    keep = ("prefill", "prefill_numerics", "pynq", "link_cfg", "timeout_s")
    return BoardBackend(model, load_config(config, devices), xclbin,
                        return_logits=return_logits,
                        **{k: options[k] for k in keep if k in options})


#: Backend name -> factory(model, **options) -> GenerationBackend.
BACKENDS: dict[str, Callable[..., GenerationBackend]] = {
    "torch": lambda model, **_: TorchBackend(model),
    "isa": _isa_backend,
    "rtl": _rtl_backend,
    "board": _board_backend,
}


def make_backend(name: str, model: nn.Module, **options) -> GenerationBackend:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name](model, **options)
