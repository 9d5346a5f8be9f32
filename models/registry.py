"""`load_model(path)`: the right model class for any checkpoint Tandem reads or writes.

Classes register themselves under their config.json `model_type`; the MoE models add
theirs the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from . import checkpoint
from .errors import ModelConfigError

__all__ = ["load_model", "model_types", "register_model_type"]


class Loadable(Protocol):
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype, device: str) -> nn.Module: ...


_MODEL_TYPES: dict[str, type[Loadable]] = {}


def register_model_type(model_type: str, cls: type[Loadable]) -> None:
    if model_type in _MODEL_TYPES and _MODEL_TYPES[model_type] is not cls:
        raise ValueError(f"model_type {model_type!r} is already registered")
    _MODEL_TYPES[model_type] = cls


def model_types() -> list[str]:
    return sorted(_MODEL_TYPES)


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> nn.Module:
    """Load an HF-format checkpoint directory, dispatching on config.json's `model_type`."""
    model_type = checkpoint.read_config(path).get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ModelConfigError(
            f"{Path(path) / 'config.json'} has model_type {model_type!r}, which Tandem cannot "
            f"load; supported: {', '.join(model_types())}"
        )
    return _MODEL_TYPES[model_type].from_pretrained(path, dtype=dtype, device=device)
