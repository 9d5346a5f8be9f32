"""`GPT2Config`: the dense GPT-2 configuration, read from and written to HF `config.json`.

Field names are HF's, so a `config.json` written by `transformers` loads here and ours
loads there. Options of HF's GPT-2 that change the arithmetic and that the accelerator
does not implement are refused, not silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelConfigError

__all__ = ["ACTIVATIONS", "GPT2Config", "check_field_types"]

#: HF activation names -> the formula used. GPT-2 itself uses the tanh form ("gelu_new").
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "erf"}

# HF GPT-2 options whose non-default value changes the forward pass.
_UNSUPPORTED = {
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "scale_attn_weights": True,
    "add_cross_attention": False,
}


def _is(value: Any, kind: str) -> bool:
    """Whether `value` (from JSON) is of the annotated type `kind`; None for an annotation this
    check does not know."""
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind == "str":
        return isinstance(value, str)
    if kind == "list[int]":
        return isinstance(value, list) and all(_is(v, "int") for v in value)
    return True


_WORDS = {"None": "null", "bool": "true or false", "int": "an integer", "float": "a number",
          "str": "a string", "list[int]": "a list of integers"}


def check_field_types(config: Any) -> None:
    """Raise ModelConfigError unless every field of the dataclass `config` holds a value of its
    annotated type: no string for a number, no null where none is allowed, no NaN or infinite
    float (JSON's 1e999 reads as infinity)."""
    for f in dataclasses.fields(config):
        kinds = [k.strip() for k in str(f.type).split("|")]
        value = getattr(config, f.name)
        if not any(_is(value, k) for k in kinds):
            what = " or ".join(_WORDS.get(k, k) for k in kinds)
            if isinstance(value, float) and not math.isfinite(value):
                what = "a finite number"
            raise ModelConfigError(f"{f.name} must be {what}, not {value!r}")


@dataclass
class GPT2Config:
    vocab_size: int = 50257  # tokens; need not be a multiple of 64
    n_positions: int = 1024  # context length (learned position embeddings)
    n_embd: int = 768  # hidden size
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads; n_embd % n_head == 0, any count
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True  # lm_head shares transformer.wte
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    model_type: str = "gpt2"

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, not {value!r}")
        if self.n_embd % self.n_head:
            raise ModelConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ModelConfigError(
                f"n_inner must be a positive integer or null, not {self.n_inner!r}"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ModelConfigError(
                f"activation_function {self.activation_function!r} is not supported; "
                f"use one of {sorted(ACTIVATIONS)}"
            )
        if not self.layer_norm_epsilon > 0:
            raise ModelConfigError(
                f"layer_norm_epsilon must be positive, not {self.layer_norm_epsilon!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    # -- HF config.json ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GPT2Config:
        for key, default in _UNSUPPORTED.items():
            if raw.get(key, default) != default:
                raise ModelConfigError(
                    f"config.json sets {key}={raw[key]!r}; Tandem implements GPT-2 with "
                    f"{key}={default!r} only"
                )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> GPT2Config:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["architectures"] = ["GPT2LMHeadModel"]
        # HF's GPT-2 defaults to dropout 0.1; a checkpoint meant for inference says 0.
        out.update(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
        return out
