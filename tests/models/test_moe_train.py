"""`tandem train` with MoE options: logged auxiliary losses, exact resume with random routing,
upcycling through --init-from, distillation, dense defaults unchanged, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import models
from host.cli import main as tandem
from models.errors import CheckpointError
from models.gpt2 import GPT2LMHead
from models.moe import MoEGPT
from models.testing import patterned_corpus
from models.train import TrainConfig, train
from models.train.trainer import STATE_FILE, build_model, init_weights

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 16, "batch_size": 4,
        "max_steps": 6, "eval_interval": 3, "eval_batches": 2, "warmup_steps": 1}
MOE = {"moe_num_experts": 4, "moe_top_k": 1, "moe_capacity_factor": 0.75,
       "moe_noisy_gate_policy": "Jitter", "moe_every": 1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return patterned_corpus(tmp_path_factory.mktemp("moe_corpus"))


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_moe_training_logs_aux_and_z_loss_and_saves_moe_gpt(corpus, tmp_path):
    cfg = TrainConfig(**TINY, **MOE)
    train(cfg, corpus, tmp_path, progress=False)
    rows = _log(tmp_path)
    assert [r["step"] for r in rows] == [3, 6]
    for r in rows:
        assert r["moe_aux_loss"] == pytest.approx(0.02, rel=0.25)  # 0.01 * ~1, two MoE blocks
        assert 0 < r["moe_z_loss"] < 0.1
        assert 0 < r["moe_dropped_fraction"] < 1  # capacity factor 0.75 drops some
        assert r["moe_active_experts"] < 1
    model = models.load_model(tmp_path)
    assert isinstance(model, MoEGPT)
    assert model.config.moe_num_experts == 4


class _Stop(Exception):
    pass


def _stopping_builder(cfg, vocab, eot):
    model = build_model(cfg, vocab, eot)
    begin = model.begin_train_step

    def stop_at_3(step, seed):
        if step == 3:
            raise _Stop
        begin(step, seed)

    model.begin_train_step = stop_at_3
    return model


def test_resume_is_exact_with_random_token_selection_and_jitter(corpus, tmp_path):
    cfg = TrainConfig(**TINY, **MOE)
    train(cfg, corpus, tmp_path / "straight", progress=False)
    with pytest.raises(_Stop):
        train(cfg, corpus, tmp_path / "resumed", progress=False, model_builder=_stopping_builder)
    train(cfg, corpus, tmp_path / "resumed", resume=True, progress=False)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log(tmp_path / "straight") == [
        {**r, "elapsed_s": s["elapsed_s"], "tokens_per_s": s["tokens_per_s"]}  # timings differ
        for r, s in zip(_log(tmp_path / "resumed"), _log(tmp_path / "straight"), strict=True)]


def test_a_run_saved_before_the_moe_options_still_resumes(corpus, tmp_path):
    cfg = TrainConfig(**TINY)
    with pytest.raises(_Stop):
        train(cfg, corpus, tmp_path, progress=False, model_builder=_dense_stopping_builder)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    state["config"] = {k: v for k, v in state["config"].items()
                       if not k.startswith(("moe_", "init_", "distill_"))}
    torch.save(state, tmp_path / STATE_FILE)
    assert train(cfg, corpus, tmp_path, resume=True, progress=False).steps == 6


def _dense_stopping_builder(cfg, vocab, eot):
    model = build_model(cfg, vocab, eot)
    model.begin_train_step = lambda step, seed: (_ for _ in ()).throw(_Stop) if step == 3 else None
    return model


def test_dense_defaults_are_unchanged(corpus, tmp_path):
    cfg = TrainConfig(**TINY)
    assert not cfg.is_moe
    torch.manual_seed(0)
    model = build_model(cfg, 64, 0)
    assert type(model) is GPT2LMHead
    train(cfg, corpus, tmp_path, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"
    assert not any(k.startswith("moe_") for r in _log(tmp_path) for k in r)


def test_init_from_a_dense_checkpoint_upcycles_it(corpus, tmp_path):
    train(TrainConfig(**TINY), corpus, tmp_path / "dense", progress=False)
    dense = models.load_model(tmp_path / "dense")
    cfg = TrainConfig(**TINY, **MOE, init_from=str(tmp_path / "dense"))
    torch.manual_seed(cfg.seed)
    moe = build_model(cfg, 64, 0)
    init_weights(moe, cfg.init_from)
    ids = torch.randint(0, 64, (2, 16))
    assert (moe.eval()(ids)[0] - dense(ids)[0]).abs().max().item() <= 1e-5
    result = train(cfg, corpus, tmp_path / "upcycled", progress=False)
    first = _log(tmp_path / "upcycled")[0]["val_loss"]
    dense_val = _log(tmp_path / "dense")[-1]["val_loss"]
    assert first < dense_val + 0.5  # starts from the dense model, not from scratch (~4.2)
    assert result.steps == 6


def test_init_from_a_mismatched_checkpoint_is_one_clear_line(corpus, tmp_path, capsys):
    train(TrainConfig(**TINY), corpus, tmp_path / "dense", progress=False)
    cfg = TrainConfig(**{**TINY, "n_embd": 64}, init_from=str(tmp_path / "dense"))
    with pytest.raises(CheckpointError, match="match the model options"):
        init_weights(build_model(cfg, 64, 0), cfg.init_from)
    code = tandem(["train", "--data", str(corpus), "--out", str(tmp_path / "x"),
                   "--n-embd", "64", "--n-layer", "2", "--n-head", "2", "--block-size", "16",
                   "--init-from", str(tmp_path / "dense")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "transformer.wte.weight" in err


def test_distillation_from_a_teacher_lowers_the_kd_loss(corpus, tmp_path):
    train(TrainConfig(**TINY, **MOE), corpus, tmp_path / "teacher", progress=False)
    student = TrainConfig(**{**TINY, "max_steps": 12, "lr": 3e-3},
                          distill_from=str(tmp_path / "teacher"), distill_alpha=1.0)
    train(student, corpus, tmp_path / "student", progress=False)
    kd = [r["distill_kd"] for r in _log(tmp_path / "student")]
    assert kd[-1] < kd[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--moe-num-experts", "2", "--moe-top-k", "3"],
         "moe_top_k (3) must not exceed num_experts (2)"),
        (["--moe-num-experts", "4", "--moe-capacity-factor", "0"],
         "moe_capacity_factor must be > 0, not 0.0"),
        (["--moe-pyramid", "4,x"], "moe_pyramid must be comma-separated integers"),
        (["--moe-num-experts", "4", "--moe-gate", "hash"], "moe_gate must be one of"),
    ],
)
def test_bad_moe_options_exit_2_with_one_line(flags, message, tmp_path, capsys):
    code = tandem(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                   *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1


def test_train_help_documents_the_moe_options(capsys):
    with pytest.raises(SystemExit):
        tandem(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--moe-num-experts", "--moe-top-k", "--moe-gate", "--moe-aux-loss-coef",
                 "--moe-z-loss-coef", "--init-from", "--distill-from"):
        assert flag in out
    assert "experts per MoE block" in out
