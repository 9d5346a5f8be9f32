"""Exact resume after `--stop-after`, every RNG restored; tokens/s and MFU in the log; the
command's refusals and its Triton fallback on the CPU; bf16 autocast on the CPU."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from host.cli import main as tandem
from models import CheckpointError
from models.train import TrainConfig, train
from models.train import distributed as train_distributed
from models.train.distributed import NUMPY_GLOBAL_RNG
from models.train.throughput import flops_per_token
from models.train.trainer import STATE_FILE, build_model

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 32, "batch_size": 4,
        "warmup_steps": 2, "lr": 3e-3, "min_lr": 3e-4, "eval_interval": 2, "eval_batches": 2,
        "max_steps": 6}
FLAGS = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32",
         "--batch-size", "4", "--warmup-steps", "2", "--lr", "3e-3", "--min-lr", "3e-4",
         "--eval-interval", "2", "--eval-batches", "2", "--max-steps", "4", "--grad-accum", "2",
         "--device", "cpu", "--no-progress"]
TIMING = ("elapsed_s", "tokens_per_s")


def _log(path) -> list[dict]:
    rows = [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _same_weights(a, b) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_stop_after_then_resume_gives_the_uninterrupted_log(tmp_path, tiny_corpus, capsys):
    data = ["--data", str(tiny_corpus)]
    assert tandem(["train", *data, "--out", str(tmp_path / "straight"), *FLAGS]) == 0
    # step 3 lies inside a logging window: its unfinished window is part of the checkpoint
    assert tandem(["train", *data, "--out", str(tmp_path / "resumed"), *FLAGS,
                   "--stop-after", "3", "--kernels", "triton"]) == 0
    err = capsys.readouterr().err
    assert "notice: --kernels triton" in err  # the CPU falls back to torch, with one notice
    assert "stopped after step 3" in err
    state = torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=True)
    assert state["step"] == 3
    assert len(state["window"]) == 1  # step 3's loss, waiting for the row of step 4
    assert [r["step"] for r in _log(tmp_path / "resumed")] == [2]
    assert tandem(["train", *data, "--out", str(tmp_path / "resumed"), *FLAGS, "--resume",
                   "--kernels", "triton"]) == 0
    straight, resumed = _log(tmp_path / "straight"), _log(tmp_path / "resumed")
    assert [r["step"] for r in straight] == [2, 4]
    assert resumed == straight  # train and val losses bit-identical, and everything else
    assert _same_weights(tmp_path / "straight", tmp_path / "resumed")


class _NoisyBuilder:
    """A model whose forward draws from the global torch, numpy and python RNGs (as dropout
    or any stray sampling would): a resume is exact only if all three are restored."""

    def __call__(self, cfg, vocab_size, eot_id):
        model = build_model(cfg, vocab_size, eot_id)

        def noise(module, args, output):
            logits, present = output
            scale = 1 + NUMPY_GLOBAL_RNG.random_sample() + random.random()
            return logits + 0.1 * scale * torch.rand_like(logits), present  # (B, T, V)

        model.register_forward_hook(noise)
        return model


@pytest.mark.parametrize("restore", [True, False])
def test_resume_restores_the_global_rng_states(tmp_path, tiny_corpus, monkeypatch, restore):
    cfg = TrainConfig(**TINY)
    torch.manual_seed(1)
    train(cfg, tiny_corpus, tmp_path / "straight", progress=False, model_builder=_NoisyBuilder())
    train(cfg, tiny_corpus, tmp_path / "resumed", progress=False, model_builder=_NoisyBuilder(),
          stop_after=3)
    if not restore:  # shows that the check can fail: without the restore the runs part ways
        monkeypatch.setattr("models.train.trainer.set_rng_states", lambda state: None)
        torch.manual_seed(2)
    train(cfg, tiny_corpus, tmp_path / "resumed", resume=True, progress=False,
          model_builder=_NoisyBuilder())
    same = _log(tmp_path / "resumed") == _log(tmp_path / "straight")
    assert same is restore


def test_rng_states_round_trip():
    saved = train_distributed.get_rng_states()
    want = (torch.rand(3), NUMPY_GLOBAL_RNG.random_sample(3), random.random())
    train_distributed.set_rng_states(saved)
    got = (torch.rand(3), NUMPY_GLOBAL_RNG.random_sample(3), random.random())
    assert torch.equal(got[0], want[0])
    assert np.array_equal(got[1], want[1])
    assert got[2] == want[2]


def test_resume_with_another_process_count_is_refused(tmp_path, tiny_corpus, capsys):
    cfg = TrainConfig(**TINY)
    train(cfg, tiny_corpus, tmp_path, progress=False, stop_after=2)
    capsys.readouterr()
    code = tandem(["train", "--data", str(tiny_corpus), "--out", str(tmp_path), "--resume",
                   "--nproc", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "trained by 1 process(es); resume with --nproc 1" in err
    assert err.count("\n") == 1
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    state["world_size"] = 2
    torch.save(state, tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match=r"trained by 2 process\(es\), this launch has 1"):
        train(cfg, tiny_corpus, tmp_path, resume=True, progress=False)


def test_tokens_per_second_and_mfu_are_logged(tmp_path, tiny_corpus):
    cfg = TrainConfig(**{**TINY, "max_steps": 2})
    train(cfg, tiny_corpus, tmp_path / "cpu", progress=False)
    row = json.loads((tmp_path / "cpu" / "train_log.jsonl").read_text())
    assert row["tokens_per_s"] > 0
    assert "mfu" not in row  # the CPU has no known peak: no MFU rather than an invented one
    train(cfg, tiny_corpus, tmp_path / "peak", progress=False, peak_tflops=1e-3)
    row = json.loads((tmp_path / "peak" / "train_log.jsonl").read_text())
    fpt = flops_per_token(build_model(cfg, 512, 0), cfg.n_layer, cfg.n_embd, cfg.block_size)
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * fpt / 1e9, rel=1e-3, abs=1e-5)


def test_flops_per_token_counts_active_parameters():
    cfg = TrainConfig(**TINY)
    dense = build_model(cfg, 512, 0)
    n = sum(p.numel() for p in dense.parameters()) - dense.transformer.wpe.weight.numel()
    attention = 12 * 2 * 32 * 32  # 12 x n_layer x n_embd x block_size
    assert flops_per_token(dense, 2, 32, 32) == 6 * n + attention
    moe_cfg = TrainConfig(**TINY, moe_num_experts=4, moe_top_k=2)
    moe = build_model(moe_cfg, 512, 0)
    expert = sum(p.numel() for name, p in moe.named_parameters() if ".experts." in name)
    rest = sum(p.numel() for p in moe.parameters()) - expert - moe.transformer.wpe.weight.numel()
    assert flops_per_token(moe, 2, 32, 32) == 6 * (rest + expert * 2 / 4) + attention


def test_bf16_autocast_on_the_cpu_trains_close_to_fp32(tmp_path, tiny_corpus):
    cfg = TrainConfig(**{**TINY, "max_steps": 2})
    train(cfg, tiny_corpus, tmp_path / "fp32", progress=False)
    train(TrainConfig(**{**cfg.to_dict(), "precision": "bf16"}), tiny_corpus, tmp_path / "bf16",
          progress=False)
    a, b = _log(tmp_path / "fp32")[0], _log(tmp_path / "bf16")[0]
    assert a["val_loss"] != b["val_loss"]  # autocast did run in bf16
    assert abs(a["val_loss"] - b["val_loss"]) < 0.05


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--nproc", "0"], "nproc must be a positive integer, not 0"),
     (["--nproc", "99999999999999999999999", "--device", "cpu"],
      "CPU processes, each with its own copy of the model"),
     (["--grad-accum", "0"], "grad_accum must be a positive integer, not 0"),
     (["--shard"], "shard (FSDP2) needs several processes"),
     (["--stop-after", "0"], "--stop-after must be a positive step number, not 0"),
     (["--peak-tflops", "0"], "--peak-tflops must be > 0"),
     (["--precision", "fp16", "--device", "cpu"], "precision fp16 needs CUDA"),
     (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, not 'tpu'"),
     (["--precision", "fp8"], "precision must be one of auto, fp32, bf16, fp16"),
     (["--kernels", "cuda"], "kernels must be one of torch, triton, auto"),
     (["--moe-ep-size", "2"], "moe_ep_size > 1 needs an MoE model"),
     (["--moe-num-experts", "4", "--moe-ep-size", "2"],
      "moe_ep_size (2) must divide the number of processes (1)"),
     (["--shard", "--moe-num-experts", "4", "--nproc", "2", "--device", "cpu"],
      "shard (FSDP2) is for dense models")],
)
def test_bad_options_exit_2_with_one_line(flags, message, tmp_path, capsys):
    code = tandem(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                   *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_the_loss_module_computes_the_models_loss(tiny_corpus):
    from models.data import TokenData
    from models.train.trainer import LMLoss

    torch.manual_seed(0)
    model = build_model(TrainConfig(**TINY), 512, 0)
    x, y = TokenData(tiny_corpus).batch("train", 2, 32, torch.Generator().manual_seed(0))
    loss, logits = LMLoss(model)(x, y)
    assert logits.shape == (2, 32, 512)
    fused, none = LMLoss(model, fused=True)(x, y)  # the model's lm_loss (torch kernels here)
    assert none is None
    assert torch.equal(fused, loss)
    assert torch.equal(loss, torch.nn.functional.cross_entropy(model(x)[0].reshape(-1, 512),
                                                               y.reshape(-1)))
