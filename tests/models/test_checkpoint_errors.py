"""Bad checkpoints get one actionable error naming the problem, never a traceback from deep
inside torch or safetensors."""

from __future__ import annotations

import json
import os
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


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("layer_norm_epsilon", '"x"', "layer_norm_epsilon must be a number, not 'x'"),
        ("n_embd", "null", "n_embd must be an integer, not None"),
        ("layer_norm_epsilon", "NaN", "layer_norm_epsilon must be a finite number, not nan"),
        ("layer_norm_epsilon", "1e999", "layer_norm_epsilon must be a finite number, not inf"),
        ("tie_word_embeddings", "1", "tie_word_embeddings must be true or false, not 1"),
        ("bos_token_id", '"0"', "bos_token_id must be an integer or null, not '0'"),
    ],
)
def test_config_values_of_the_wrong_type(ckpt, key, raw, message):
    """Each of these raised a TypeError (or loaded) before: the JSON is edited as text, so NaN
    and 1e999 reach the loader as Python's json reads them."""
    config = json.loads((ckpt / "config.json").read_text())
    config[key] = "@@"
    (ckpt / "config.json").write_text(json.dumps(config).replace('"@@"', raw))
    with pytest.raises(ModelConfigError, match=message):
        load_model(ckpt)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int64])
def test_integer_or_bool_weights_are_refused(ckpt, dtype):
    from safetensors.torch import load_file, save_file

    state = load_file(ckpt / "model.safetensors")
    key = sorted(state)[0]
    state[key] = state[key].to(dtype)
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"is stored as {str(dtype)[6:]}; weights must be "
                                              "floating point"):
        load_model(ckpt)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_infinite_weights_are_refused(ckpt, bad):
    from safetensors.torch import load_file, save_file

    state = load_file(ckpt / "model.safetensors")
    key = sorted(state)[-1]
    state[key].view(-1)[3] = bad
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="holds NaN or infinite values"):
        load_model(ckpt)


def test_a_file_as_checkpoint_says_it_is_a_file(tmp_path):
    file = tmp_path / "model.bin"
    file.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint directory"):
        load_model(file)


def test_saved_weights_are_not_private(tmp_path, tiny_checkpoint):
    """safetensors writes 0600; a saved checkpoint is readable like any file the user makes."""
    model = load_model(tiny_checkpoint)
    model.save_pretrained(tmp_path / "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
