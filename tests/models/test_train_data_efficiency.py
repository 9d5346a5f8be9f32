"""`tandem train --data-efficiency CONFIG.json`: DeepSpeed's curriculum learning and random-LTD
in the trainer, with a truthful token count and an exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from host.cli import main as tandem
from models.train.trainer import STATE_FILE

FLAGS = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
         "--batch-size", "2", "--warmup-steps", "1", "--eval-interval", "2",
         "--eval-batches", "1", "--max-steps", "4", "--device", "cpu", "--no-progress"]


def _config(**seqlen) -> dict:
    """seqlen_truncate 8 -> 16 over 4 steps in steps of 4; random-LTD in block 1, 8 -> 16."""
    return {"data_efficiency": {
        "enabled": True, "seed": 3,
        "data_routing": {"enabled": True, "random_ltd": {
            "enabled": True, "random_ltd_layer_id": [1], "random_ltd_layer_num": 1,
            "random_ltd_schedule": {"min_value": 8, "max_value": 16,
                                    "schedule_type": "fixed_linear",
                                    "schedule_config": {"require_steps": 4,
                                                        "seq_per_step": 4}}}},
        "data_sampling": {"enabled": True, "curriculum_learning": {
            "enabled": True, "curriculum_metrics": {"seqlen_truncate": {
                "difficulty_type": "value", "min_difficulty": 8, "max_difficulty": 16,
                "schedule_type": "fixed_linear",
                "schedule_config": {"total_curriculum_step": 4, "difficulty_step": 4},
                **seqlen}}}}}}


def _log(path) -> list[dict]:
    rows = [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in rows]


def test_curriculum_and_random_ltd_train_count_truncated_tokens_and_resume(tmp_path,
                                                                           tiny_corpus, capsys):
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps(_config()))
    data = ["--data", str(tiny_corpus), *FLAGS]
    assert tandem(["train", *data, "--out", str(tmp_path / "plain")]) == 0
    assert tandem(["train", *data, "--out", str(tmp_path / "de"),
                   "--data-efficiency", str(cfg)]) == 0
    plain, de = _log(tmp_path / "plain"), _log(tmp_path / "de")
    # plain: 2 windows x 16 tokens a step. seqlen_truncate at curriculum step s + 1:
    # floor(8 + 8 (s + 1) / 4) rounded down to a multiple of 4 -> 8, 12, 12, 16
    assert [r["tokens"] for r in plain] == [64, 128]
    assert [r["tokens"] for r in de] == [2 * (8 + 12), 2 * (8 + 12 + 12 + 16)]
    assert de[0]["train_loss"] != plain[0]["train_loss"]  # it really trained otherwise
    saved = json.loads((tmp_path / "de" / "train_config.json").read_text())
    assert saved["data_efficiency"] == str(cfg)
    # stopped after step 1 and resumed (the path comes back from train_config.json)
    assert tandem(["train", *data, "--out", str(tmp_path / "resumed"),
                   "--data-efficiency", str(cfg), "--stop-after", "1"]) == 0
    assert torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=True)["tokens"] == 16
    assert tandem(["train", "--data", str(tiny_corpus), "--out", str(tmp_path / "resumed"),
                   "--resume", "--device", "cpu", "--no-progress"]) == 0
    assert _log(tmp_path / "resumed") == de
    # a file changed since the run started is refused, not silently followed
    cfg.write_text(json.dumps(_config(min_difficulty=12)))
    code = tandem(["train", "--data", str(tiny_corpus), "--out", str(tmp_path / "de"),
                   "--resume", "--device", "cpu", "--no-progress", "--max-steps", "4"])
    assert code == 2
    assert capsys.readouterr().err.endswith(f"{cfg} changed since the run started\n")


@pytest.mark.parametrize(("body", "message"), [
    (None, "cannot read data_efficiency file"),
    ("{nope", "is not valid JSON"),
    (_config(schedule_type="fixed_cubic"), "fixed_cubic"),
    (_config(min_difficulty=32), "min_difficulty"),
    ({"data_efficiency": {"enabled": True, "data_sampling": {"enabled": True,
      "curriculum_learning": {"enabled": True, "curriculum_metrics": {"loudness": {}}}}}},
     "loudness"),
])
def test_bad_data_efficiency_config_is_one_line_exit_2(body, message, tmp_path, capsys):
    path = tmp_path / "ds.json"
    if body is not None:
        path.write_text(body if isinstance(body, str) else json.dumps(body))
    code = tandem(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                   "--data-efficiency", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # two torchrun ranks: ~15 s alone, more on a busy machine
@pytest.mark.timeout(300)
def test_nproc_2_each_rank_draws_its_share_and_tokens_count_both(tmp_path, tiny_corpus):
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps(_config()))
    out = tmp_path / "run"
    assert tandem(["train", "--data", str(tiny_corpus), "--out", str(out), *FLAGS,
                   "--nproc", "2", "--data-efficiency", str(cfg)]) == 0
    # 2 ranks x 2 windows a step, truncated to 8, 12, 12, 16 tokens
    assert [r["tokens"] for r in _log(out)] == [2 * 2 * (8 + 12), 2 * 2 * (8 + 12 + 12 + 16)]
