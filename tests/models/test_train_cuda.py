"""The trainer on CUDA: bf16 autocast by default with FP32 master weights, fp16 with a
gradient scaler (saved and restored), torch.compile, the Triton kernels, and MFU from the
GPU table. Skipped without CUDA (the `gpu` marker)."""

from __future__ import annotations

import json

import pytest
import torch

from models.train import TrainConfig, train
from models.train.throughput import peak_tflops_for
from models.train.trainer import STATE_FILE

pytestmark = pytest.mark.gpu

TINY = {"n_layer": 2, "n_embd": 64, "n_head": 2, "block_size": 64, "batch_size": 8,
        "warmup_steps": 2, "lr": 3e-3, "min_lr": 3e-4, "eval_interval": 2, "eval_batches": 2,
        "max_steps": 4}


def _log(path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def _losses(path) -> list[float]:
    return [v for r in _log(path) for v in (r["train_loss"], r["val_loss"])]


def _run(tmp_path, name, tiny_corpus, **options):
    train(TrainConfig(**{**TINY, **options}), tiny_corpus, tmp_path / name, device="cuda",
          progress=False)
    return _losses(tmp_path / name)


def test_bf16_autocast_is_the_default_with_fp32_master_weights(tmp_path, tiny_corpus):
    fp32 = _run(tmp_path, "fp32", tiny_corpus, precision="fp32")
    auto = _run(tmp_path, "auto", tiny_corpus)
    assert auto != fp32  # autocast ran
    assert max(abs(a - b) for a, b in zip(auto, fp32, strict=True)) < 0.05
    state = torch.load(tmp_path / "auto" / STATE_FILE, weights_only=True)
    assert all(t.dtype == torch.float32 for t in state["model"].values())
    row = _log(tmp_path / "auto")[-1]
    assert row["tokens_per_s"] > 0
    if peak_tflops_for(torch.device("cuda")) is not None:
        assert 0 < row["mfu"] < 1
    else:
        assert "mfu" not in row


def test_fp16_saves_its_grad_scaler_and_resumes(tmp_path, tiny_corpus):
    cfg = TrainConfig(**{**TINY, "precision": "fp16"})
    train(cfg, tiny_corpus, tmp_path / "straight", device="cuda", progress=False)
    train(cfg, tiny_corpus, tmp_path / "resumed", device="cuda", progress=False, stop_after=3)
    state = torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=True)
    assert state["scaler"]["scale"] > 0
    train(cfg, tiny_corpus, tmp_path / "resumed", device="cuda", progress=False, resume=True)
    # CUDA kernels (embedding backward's atomics) need not be bit-reproducible: 1e-3 nats
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3


def test_compile_trains_like_eager(tmp_path, tiny_corpus):
    eager = _run(tmp_path, "eager", tiny_corpus, precision="fp32")
    compiled = _run(tmp_path, "compiled", tiny_corpus, precision="fp32", compile=True)
    assert max(abs(a - b) for a, b in zip(eager, compiled, strict=True)) < 1e-3


def test_triton_kernels_train_like_torch(tmp_path, tiny_corpus):
    torch_path = _run(tmp_path, "torch", tiny_corpus, precision="fp32")
    triton_path = _run(tmp_path, "triton", tiny_corpus, precision="fp32", kernels="triton")
    assert max(abs(a - b) for a, b in zip(torch_path, triton_path, strict=True)) < 1e-2
