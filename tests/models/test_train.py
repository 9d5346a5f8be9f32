"""The trainer: schedule, learning, exact resume, loadable checkpoints, refusals."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from models import CheckpointError, ModelConfigError, load_model, load_tokenizer
from models.train import TrainConfig, lr_at, train

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 32, "batch_size": 4,
        "warmup_steps": 3, "lr": 3e-3, "min_lr": 3e-4, "eval_interval": 5, "eval_batches": 2}


def test_schedule_shape():
    lrs = [lr_at(s, 1.0, 0.1, 10, 100) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # cosine only decays
    assert lr_at(100, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 0.1, 10, 100) == pytest.approx(0.55)  # half way: the mean


def test_training_learns_and_checkpoints_load(tmp_path, tiny_corpus):
    result = train(TrainConfig(max_steps=30, **TINY), tiny_corpus, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
    # from ln(512) = 6.24 nats at initialisation, 30 steps must have learned something real
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 0.5
    assert result.val_loss == log[-1]["val_loss"]
    model = load_model(tmp_path)
    assert model.config.n_positions == 32
    assert model.config.vocab_size == 512
    assert load_tokenizer(tmp_path).vocab_size == 512


def test_resume_is_exact(tmp_path, tiny_corpus):
    cfg = TrainConfig(max_steps=10, **TINY)
    train(cfg, tiny_corpus, tmp_path / "straight", progress=False)
    with pytest.raises(_Killed):  # dies in step 6, after the checkpoint of step 5
        train(cfg, tiny_corpus, tmp_path / "resumed", progress=False,
              model_builder=_Interrupt(after_steps=5))
    train(cfg, tiny_corpus, tmp_path / "resumed", resume=True, progress=False)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class _Killed(Exception):
    pass


class _Interrupt:
    """A model builder whose model raises once it has been trained `after_steps` steps, as a
    kill would, after the checkpoint at step `after_steps` was written."""

    def __init__(self, after_steps: int) -> None:
        self.after_steps = after_steps

    def __call__(self, cfg, vocab_size, eot_id):
        from models.train.trainer import build_model

        model = build_model(cfg, vocab_size, eot_id)
        calls = {"n": 0}
        limit = self.after_steps * cfg.grad_accum + cfg.eval_batches  # train + one eval pass

        def hook(module, args):
            calls["n"] += 1
            if calls["n"] > limit:
                raise _Killed

        model.register_forward_pre_hook(hook)
        return model


def test_interrupted_run_left_a_resumable_checkpoint(tmp_path, tiny_corpus):
    cfg = TrainConfig(max_steps=10, **TINY)
    with pytest.raises(_Killed):
        train(cfg, tiny_corpus, tmp_path, progress=False, model_builder=_Interrupt(5))
    state = torch.load(tmp_path / "trainer_state.pt", weights_only=True)
    assert state["step"] == 5


def test_refusals(tmp_path, tiny_corpus):
    cfg = TrainConfig(max_steps=5, **TINY)
    train(cfg, tiny_corpus, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(cfg, tiny_corpus, tmp_path, progress=False)
    changed = TrainConfig(**{**cfg.to_dict(), "lr": 1e-2})
    with pytest.raises(CheckpointError, match=r"options differ from the saved run \(lr\)"):
        train(changed, tiny_corpus, tmp_path, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(cfg, tiny_corpus, tmp_path / "empty", resume=True, progress=False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("n_head", 3, r"n_embd \(32\) must be divisible by n_head \(3\)"),
     ("min_lr", 1.0, "need 0 < min_lr <= lr"),
     ("batch_size", 0, "batch_size must be a positive integer"),
     ("save_dtype", "int8", "save_dtype must be one of")],
)
def test_config_validation(field, value, message):
    with pytest.raises(ModelConfigError, match=message):
        TrainConfig(**{**TINY, field: value})


def test_parameter_count_is_the_built_models():
    from models import GPT2Config, GPT2LMHead
    from models.sizing import parameter_count

    for tied in (True, False):
        config = GPT2Config(vocab_size=97, n_positions=32, n_embd=24, n_layer=3, n_head=3,
                            tie_word_embeddings=tied)
        model = GPT2LMHead(config)
        unique = {id(p): p.numel() for p in model.parameters()}
        assert parameter_count(config) == sum(unique.values())


def test_a_model_that_cannot_fit_is_refused_before_it_is_built(tmp_path, tiny_corpus, capsys):
    from host.cli import main

    out = tmp_path / "huge"
    code = main(["train", "--data", str(tiny_corpus), "--out", str(out), "--max-steps", "1",
                 "--n-layer", "99999999999999999999999", "--n-embd", "16", "--n-head", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "training needs at least" in err
    assert "GB is free" in err
    assert not out.exists()
    assert main(["train", "--data", str(tiny_corpus), "--out", str(out), "--max-steps", "1",
                 "--seed", str(2**64)]) == 2
    assert "seed must be an integer in 0..2**63-1" in capsys.readouterr().err
