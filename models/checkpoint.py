"""HF-format checkpoint directories: config.json + model.safetensors (or pytorch_model.bin,
or a sharded `*.index.json`), read and written with clear errors for what a user can fix.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError

__all__ = ["load_weights", "read_config", "read_state_dict", "save", "weight_file"]

# Checkpoint buffers of HF's GPT-2 that are recomputed, not learned.
_DERIVED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_CHECKPOINT_HELP = "an HF-format directory holds config.json and model.safetensors"


def _directory(path: str | Path) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a checkpoint directory; {_CHECKPOINT_HELP}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist; {_CHECKPOINT_HELP}")
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    path = _directory(path)
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{path} has no config.json; {_CHECKPOINT_HELP}")
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); fix or re-save it") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file} must hold a JSON object, not {type(raw).__name__}")
    return raw


def weight_file(path: str | Path) -> Path:
    """The weights file of a checkpoint directory, in HF's order of preference."""
    path = _directory(path)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(
        f"{path} has no model.safetensors or pytorch_model.bin; {_CHECKPOINT_HELP}"
    )


def _load_one(file: Path) -> dict[str, torch.Tensor]:
    fix = "re-save or re-copy the checkpoint"
    try:
        if file.suffix == ".safetensors":
            return load_file(file)
        with warnings.catch_warnings():
            # torch notes pickle protocols other than its own default; we judge the result.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights file {file} is missing; {fix}") from None
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{file} is corrupt or truncated ({reason}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} does not hold a state dict of tensors; {fix}")
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    file = weight_file(path)
    if file.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{file} is not a valid shard index ({e})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_one(file.parent / shard))
        return state
    return _load_one(file)


def _normalise_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Accept both `transformer.h.0...` and the original release's bare `h.0...` keys."""
    out = {}
    for key, value in state.items():
        if key.endswith(_DERIVED_SUFFIXES):
            continue
        if key not in expected and f"transformer.{key}" in expected:
            key = f"transformer.{key}"
        out[key] = value
    return out


def load_weights(
    model: nn.Module, path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> None:
    """Fill `model` (possibly built on the meta device) with the checkpoint's tensors.

    Every parameter must be present with the shape the config implies; tied parameters
    (lm_head <- wte) may be absent from the file, as HF omits them.
    """
    expected = dict(model.state_dict(keep_vars=True))
    # Parameters shared with another key: `lm_head.weight` is `transformer.wte.weight`.
    first_name: dict[int, str] = {}
    aliases = {}
    for name, tensor in expected.items():
        if id(tensor) in first_name:
            aliases[name] = first_name[id(tensor)]
        else:
            first_name[id(tensor)] = name
    state = _normalise_keys(read_state_dict(path), set(expected))
    source = weight_file(path)
    missing = [k for k in expected if k not in state and k not in aliases]
    if missing:
        raise CheckpointError(
            f"{source} lacks tensor {missing[0]!r} ({len(missing)} missing in all); "
            "the weights do not belong to this config.json"
        )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{source} holds tensor {unexpected[0]!r} that config.json's model has no place for "
            f"({len(unexpected)} unexpected in all); check model_type and the sizes in config.json"
        )
    for key, tensor in state.items():
        want = tuple(expected[key].shape)
        if tuple(tensor.shape) != want:
            raise CheckpointError(
                f"tensor {key!r} in {source} has shape {tuple(tensor.shape)} but config.json "
                f"implies {want}; the weights and config.json do not belong together"
            )
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            stored = str(tensor.dtype).removeprefix("torch.")
            raise CheckpointError(
                f"tensor {key!r} in {source} is stored as {stored}; weights must be floating "
                "point (float32, float16 or bfloat16)"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"tensor {key!r} in {source} holds NaN or infinite values; the checkpoint is "
                "damaged (or training diverged), re-save it from a good run"
            )
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items() if k not in aliases}
    model.load_state_dict(state, strict=False, assign=True)
    for name, source_name in aliases.items():  # re-tie what `assign` untied
        owner_path, _, attr = name.rpartition(".")
        src_owner, _, src_attr = source_name.rpartition(".")
        setattr(model.get_submodule(owner_path), attr,
                getattr(model.get_submodule(src_owner), src_attr))


def _chmod_like_new_file(file: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    file.chmod(0o666 & ~mask)


def save(
    model: nn.Module, path: str | Path, config: dict[str, Any], dtype: torch.dtype | None = None
) -> None:
    """Write config.json + model.safetensors; tied copies are stored once, as HF does."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        t = tensor.detach().to("cpu")
        tensors[name] = (t.to(dtype) if dtype is not None else t).contiguous()
    stored = next(iter(tensors.values())).dtype
    config = {**config, "dtype": str(stored).removeprefix("torch.")}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    _chmod_like_new_file(path / "model.safetensors")  # safetensors writes 0600
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
