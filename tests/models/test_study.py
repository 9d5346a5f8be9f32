"""scripts/study.py: the schedules it counts tokens and FLOPs with agree with the trainer's and
with models.train.throughput, and both studies run end to end at a toy scale."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.config import GPT2Config
from models.gpt2 import GPT2LMHead
from models.train.throughput import flops_per_token

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study"] = module
    spec.loader.exec_module(module)
    return module


ARGS = SimpleNamespace(block_size=128, n_layer=4, n_embd=128, n_head=4, batch_size=16,
                       vocab_size=4096)


def test_baseline_flops_are_the_trainers_flops_per_token(study):
    model = GPT2LMHead(GPT2Config(vocab_size=4096, n_positions=128, n_embd=128, n_layer=4,
                                  n_head=4))
    per_step = study.flops_per_step(None, 3, ARGS)
    assert np.allclose(per_step, flops_per_token(model, 4, 128, 128) * 16 * 128)


def test_schedules_of_the_arms(study):
    steps = 300
    curriculum = study.de_config("curriculum", 1, steps, ARGS)
    lengths, kept = study.step_shapes(curriculum, 400, 128)
    # seqlen_truncate: 32 + s/90 * 96 at curriculum step s = trainer step + 1, multiples of 8
    assert lengths[[0, 44, 88, 89, -1]].tolist() == [32, 80, 120, 128, 128]
    assert np.array_equal(kept, lengths)
    ltd = study.de_config("random-ltd", 1, steps, ARGS)
    lengths, kept = study.step_shapes(ltd, 400, 128)
    # kept: 32 + s/210 * 96, multiples of 16, full from step 210
    assert (kept[0], kept[105], kept[209], kept[210]) == (32, 80, 112, 128)
    assert (lengths == 128).all()
    tokens = steps * 16 * 128
    n = study.steps_for_tokens(curriculum, tokens, 16, 128)
    cum = np.cumsum(study.step_shapes(curriculum, n, 128)[0] * 16)
    assert cum[-1] >= tokens > cum[-2]
    assert study.flops_per_step(ltd, 400, ARGS)[0] < study.flops_per_step(None, 1, ARGS)[0]


def test_crossing(study):
    assert study.crossing([1, 2, 3], [5.0, 4.0, 3.0], 3.5) == pytest.approx(2.5)
    assert study.crossing([1, 2], [5.0, 4.0], 3.0) is None
    assert study.crossing([1, 2], [3.0, 2.0], 4.0) == 1


@pytest.mark.slow  # four `tandem train` processes: ~20 s alone, more on a shared machine
def test_both_studies_end_to_end_at_toy_scale(study, tmp_path):
    toy = ["--out", str(tmp_path), "--limit-files", "24", "--val-fraction", "0.3",
           "--vocab-size", "300", "--block-size", "64", "--n-layer", "3", "--n-embd", "16",
           "--n-head", "2", "--batch-size", "2", "--steps", "2", "--warmup-steps", "1",
           "--eval-interval", "1", "--eval-batches", "1", "--seeds", "1", "--no-nice",
           "--fim-max-chars", "80"]
    study.main(["data-efficiency", *toy, "--png", str(tmp_path / "de.png"),
                "--arms", "baseline", "both"])
    summary = json.loads((tmp_path / "data-efficiency" / "summary.json").read_text())
    assert set(summary["arms"]) == {"baseline", "both"}
    assert summary["arms"]["both"]["tokens"][0] >= summary["arms"]["baseline"]["tokens"][0]
    assert (tmp_path / "de.png").stat().st_size > 0
    study.main(["fim", *toy, "--png", str(tmp_path / "fim.png"), "--fim-arms", "ar", "fim-ctx",
                "--spans", "3"])
    results = json.loads((tmp_path / "fim" / "summary.json").read_text())
    assert len(results["fim-ctx"]["exact_match"]) == 1
    assert not (tmp_path / "fim" / "ar-s1").exists()  # the AR arm is the baseline run
    assert (tmp_path / "fim.png").stat().st_size > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--batch-size", "-3"], "--batch-size must be at least 1"),
    (["--fim-rate", "nan"], "--fim-rate must be in [0, 1]"),
    (["--seeds", "1", "-1"], "--seeds must be integers"),
    (["--report-every", "inf"], "--report-every must be a positive number"),
    (["--out", "README.md"], "--out README.md is a file"),
    (["--png", "docs"], "--png docs is a directory"),
])
def test_bad_arguments_are_refused_before_any_work(study, args, message, capsys, monkeypatch,
                                                   tmp_path):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    extra = [] if "--out" in args else ["--out", str(out)]
    with pytest.raises(SystemExit) as exit_:
        study.main(["data-efficiency", *extra, *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not out.exists()  # nothing was built
