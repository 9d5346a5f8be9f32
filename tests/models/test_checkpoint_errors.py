"""Bad checkpoints get one actionable error naming the problem, never a traceback from deep
inside torch or safetensors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from models import CheckpointError, ModelConfigError, load_model


@pytest.fixture
def ckpt(tmp_path, tiny_checkpoint):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, out)
    return out


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        load_model(ckpt)


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        load_model(ckpt)


def test_missing_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors or pytorch_model\.bin"):
        load_model(ckpt)


def test_truncated_safetensors(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(ckpt)


def test_garbage_pytorch_bin(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(ckpt)


def test_shape_mismatch(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["n_inner"] = 4 * config["n_embd"] + 8  # MLP width the weights do not have
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp\.c_fc\.\w+' .*has shape .* but config.json"):
        load_model(ckpt)


def test_missing_tensor(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["n_layer"] += 1
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"lacks tensor 'transformer.h.2"):
        load_model(ckpt)


def test_unexpected_tensor(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["n_layer"] -= 1
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"holds tensor 'transformer.h.1"):
        load_model(ckpt)


def test_unknown_model_type(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelConfigError, match=r"model_type 'llama'.*supported: .*gpt2"):
        load_model(ckpt)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_head", 5, r"n_embd \(48\) must be divisible by n_head \(5\)"),
        ("activation_function", "relu", "activation_function 'relu' is not supported"),
        ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=True"),
        ("vocab_size", 0, "vocab_size must be a positive integer"),
    ],
)
def test_invalid_config_values(ckpt, key, value, message):
    config = json.loads((ckpt / "config.json").read_text())
    config[key] = value
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelConfigError, match=message):
        load_model(ckpt)


def test_good_checkpoint_still_loads(ckpt):
    """The fixture the error tests corrupt is itself valid (so each error is the edit's)."""
    model = load_model(ckpt)
    logits, _ = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 512)
