"""`TorchBackend`: the golden PyTorch model as a generation backend (the `torch` backend)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from models.gpt2 import GPT2LMHead

from .api import GenerationRequest, Step

__all__ = ["TorchBackend"]


class TorchBackend:
    """The golden PyTorch model, on CUDA when present, else on the CPU."""

    name = "torch"

    def __init__(self, model: GPT2LMHead, device: str | None = None) -> None:
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
