"""Curriculum learning: DeepSpeed's schedules (hand-computed, and against DeepSpeed itself when
it is installed), the data_efficiency parser's errors, the threshold sampler."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data import (
    CurriculumSampler,
    CurriculumScheduler,
    TokenData,
    analyze,
    parse_data_efficiency,
)
from models.data.analyzer import DifficultyIndex
from models.data.curriculum import truncate_batch
from models.errors import ModelConfigError, ModelError
from models.testing import analysis_corpus

LINEAR = {"min_difficulty": 8, "max_difficulty": 64, "schedule_type": "fixed_linear",
          "schedule_config": {"total_curriculum_step": 100, "difficulty_step": 8}}


def test_fixed_linear_hand_computed():
    s = CurriculumScheduler(LINEAR)
    # floor(8 + 56 * step / 100) rounded down to a multiple of 8, at least 8, at most 64
    expect = {0: 8, 10: 8, 15: 16, 29: 24, 50: 32, 99: 64 - 8, 100: 64, 1000: 64}
    # 15: 8 + 8.4 = 16.4 -> 16; 29: 8 + 16.24 -> 24; 50: 36 -> 32; 99: 63.44 -> 63 -> 56
    assert {k: s.get_difficulty(k) for k in expect} == expect


def test_fixed_root_hand_computed():
    cfg = {"min_difficulty": 1, "max_difficulty": 100, "schedule_type": "fixed_root",
           "schedule_config": {"total_curriculum_step": 100, "difficulty_step": 1,
                               "root_degree": 2}}
    s = CurriculumScheduler(cfg)
    # floor(1 + 99 * sqrt(step / 100)): 25 -> 1 + 49.5 = 50; 4 -> 1 + 19.8 = 20; 1 -> 10.9 -> 10
    assert [s.get_difficulty(k) for k in (0, 1, 4, 25, 100, 400)] == [1, 10, 20, 50, 100, 100]


def test_floor_never_goes_below_the_first_multiple_of_the_step():
    cfg = {"min_difficulty": 8, "max_difficulty": 128, "schedule_type": "fixed_linear",
           "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 16}}
    assert CurriculumScheduler(cfg).get_difficulty(0) == 16  # not 0 tokens


def test_fixed_discrete_and_update_freezes_at_max():
    cfg = {"min_difficulty": 1, "max_difficulty": 3, "schedule_type": "fixed_discrete",
           "schedule_config": {"difficulty": [1, 2, 3], "max_step": [5, 10]}}
    s = CurriculumScheduler(cfg)
    assert [s.get_difficulty(k) for k in (0, 5, 6, 10, 11, 99)] == [1, 1, 2, 2, 3, 3]
    assert s.update_difficulty(11) == 3
    assert s.update_difficulty(0) == 3  # reached max_difficulty: no longer moves


def test_update_follows_the_schedule_below_max():
    s = CurriculumScheduler(LINEAR)
    assert [s.update_difficulty(k) for k in (15, 29, 10)] == [16, 24, 8]


@pytest.mark.parametrize(("config", "message"), [
    ({**LINEAR, "schedule_type": "fixed_cubic"}, "schedule_type must be one of"),
    ({**LINEAR, "min_difficulty": 65}, "min_difficulty (65) must not exceed max_difficulty"),
    ({**LINEAR, "schedule_config": {"difficulty_step": 8}}, "needs schedule_config.total_"),
    ({**LINEAR, "schedule_config": {"total_curriculum_step": 0, "difficulty_step": 8}},
     "total_curriculum_step must be a positive integer"),
    ({**LINEAR, "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8,
                                    "totl": 3}}, "unknown key(s) ['totl']"),
    ({**LINEAR, "schedule_type": "fixed_root"}, "needs schedule_config.root_degree"),
    ({"min_difficulty": 1, "max_difficulty": 3, "schedule_type": "fixed_discrete",
      "schedule_config": {"difficulty": [1, 2, 3], "max_step": [5]}}, "one more difficulty"),
    ({"max_difficulty": 3, "schedule_type": "fixed_linear"}, "needs 'min_difficulty'"),
    ({**LINEAR, "min_difficulty": float("nan")}, "min_difficulty must be a finite number"),
])
def test_bad_schedules_are_refused(config, message):
    with pytest.raises(ModelConfigError) as e:
        CurriculumScheduler(config)
    assert message in str(e.value)


def test_negative_step_is_refused():
    with pytest.raises(ModelConfigError, match="step must be an integer >= 0"):
        CurriculumScheduler(LINEAR).get_difficulty(-1)


# -- against DeepSpeed 0.19.8 ----------------------------------------------------------------

schedules = st.one_of(
    st.builds(
        lambda kind, lo, span, total, step, root: {
            "min_difficulty": lo, "max_difficulty": lo + span, "schedule_type": kind,
            "schedule_config": {"total_curriculum_step": total, "difficulty_step": step,
                                "root_degree": root}},
        st.sampled_from(["fixed_linear", "fixed_root"]), st.integers(0, 2048),
        st.integers(0, 4096), st.integers(1, 50_000), st.integers(1, 64),
        st.one_of(st.integers(1, 5), st.floats(0.5, 4.0))),
    st.builds(
        lambda lo, span, total, step: {
            "min_difficulty": lo, "max_difficulty": lo + span, "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": total, "difficulty_step": step}},
        st.floats(0, 100), st.floats(0, 100), st.integers(1, 1000), st.floats(0.5, 10)),
    st.lists(st.integers(1, 512), min_size=2, max_size=6).flatmap(
        lambda diffs: st.lists(st.integers(0, 10_000), min_size=len(diffs) - 1,
                               max_size=len(diffs) - 1).map(
            lambda steps: {"min_difficulty": min(diffs), "max_difficulty": max(diffs),
                           "schedule_type": "fixed_discrete",
                           "schedule_config": {"difficulty": diffs,
                                               "max_step": sorted(steps)}})),
)

COMPARED = {"configs": 0, "steps": 0}


@settings(max_examples=400, deadline=None, database=None)
@given(config=schedules, steps=st.lists(st.integers(0, 120_000), min_size=1, max_size=40))
def _compare_with_deepspeed(ds, config, steps):
    ours = CurriculumScheduler(json.loads(json.dumps(config)))
    theirs = ds.CurriculumScheduler(json.loads(json.dumps(config)))
    total = config["schedule_config"].get("total_curriculum_step", 10_000)
    probe = sorted(set(steps) | {0, 1, total - 1, total, total + 1} - {-1})
    for step in probe:
        a, b = ours.get_difficulty(step), theirs.get_difficulty(step)
        assert (a, type(a)) == (b, type(b)), (config, step)
    for step in sorted(steps):  # a training run: steps increase
        a, b = ours.update_difficulty(step), theirs.update_difficulty(step)
        assert (a, type(a)) == (b, type(b)), (config, step)
    COMPARED["configs"] += 1
    COMPARED["steps"] += len(probe) + len(steps)


def test_matches_deepspeed(capsys):
    """400 random configs (linear, root with integer and fractional degrees, float
    difficulties, discrete), each at up to 45 steps, get_difficulty and update_difficulty."""
    ds = pytest.importorskip("deepspeed.runtime.data_pipeline.curriculum_scheduler")
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)  # its difficulty_step % 8 notice
    _compare_with_deepspeed(ds)
    with capsys.disabled():
        print(f"\ncompared with DeepSpeed: {COMPARED['configs']} configs, "
              f"{COMPARED['steps']} steps")
    assert COMPARED["configs"] >= 400


# -- the data_efficiency JSON ------------------------------------------------------------------

DS_CONFIG = {
    "train_batch_size": 8,
    "data_efficiency": {
        "enabled": True, "seed": 7,
        "data_routing": {"enabled": True, "random_ltd": {
            "enabled": True, "total_layer_num": 4, "random_ltd_layer_num": 2,
            "random_ltd_layer_id": [2, 1], "model_mask_name": "attention_mask",
            "model_type": "decoder", "hidden_state_order": "batch_seq_dim",
            "random_ltd_schedule": {"min_value": 32, "max_value": 128,
                                    "schedule_type": "fixed_linear",
                                    "schedule_config": {"require_steps": 100,
                                                        "seq_per_step": 16}}}},
        "data_sampling": {"enabled": True, "num_workers": 0, "curriculum_learning": {
            "enabled": True, "data_cluster_path": "/tmp/x", "curriculum_metrics": {
                "vocabularyrarity": {
                    "index_to_sample_path": "dummy", "index_to_metric_path": "dummy",
                    "difficulty_type": "percentile", "clustering_type": "schedule_based",
                    "min_difficulty": 1, "max_difficulty": 100, "schedule_type": "fixed_root",
                    "schedule_config": {"total_curriculum_step": 50, "difficulty_step": 1,
                                        "root_degree": 2}},
                "seqlen_truncate": {
                    "index_to_sample_path": "dummy", "index_to_metric_path": "dummy",
                    "difficulty_type": "value", "clustering_type": "single_cluster",
                    "min_difficulty": 16, "max_difficulty": 128,
                    "schedule_type": "fixed_linear",
                    "schedule_config": {"total_curriculum_step": 50, "difficulty_step": 8}}}}},
    },
}


def test_parses_deepspeeds_layout():
    cfg = parse_data_efficiency(DS_CONFIG)
    assert cfg.enabled
    assert cfg.seed == 7
    assert [m.metric for m in cfg.curriculum.metrics] == ["vocab_rarity", "seqlen_truncate"]
    assert cfg.curriculum.metrics[0].difficulty_type == "percentile"
    assert cfg.curriculum.metrics[0].schedule.root_degree == 2
    ltd = cfg.random_ltd
    assert ltd.enabled
    assert ltd.layer_ids == (1, 2)
    assert (ltd.min_value, ltd.max_value, ltd.require_steps, ltd.seq_per_step) == \
        (32, 128, 100, 16)
    # the object alone parses the same, and disabled parents disable their sections
    assert parse_data_efficiency(DS_CONFIG["data_efficiency"]) == cfg
    off = json.loads(json.dumps(DS_CONFIG))
    off["data_efficiency"]["data_sampling"]["enabled"] = False
    assert not parse_data_efficiency(off).curriculum.enabled


def _with(path, value):
    cfg = json.loads(json.dumps(DS_CONFIG))
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return cfg


CL = ("data_efficiency", "data_sampling", "curriculum_learning", "curriculum_metrics")
LTD = ("data_efficiency", "data_routing", "random_ltd")


@pytest.mark.parametrize(("config", "message"), [
    (_with((*CL, "bleu"), {"min_difficulty": 1}), "unknown curriculum metric 'bleu'"),
    (_with((*CL, "seqlen_truncate", "min_difficulty"), 256),
     "min_difficulty (256) must not exceed max_difficulty (128)"),
    (_with((*CL, "seqlen_truncate", "schedule_type"), "fixed_exp"),
     "schedule_type must be one of"),
    (_with((*CL, "vocabularyrarity", "difficulty_type"), "rank"), "difficulty_type must be"),
    (_with((*CL, "vocabularyrarity", "max_difficulty"), 150), "percentile difficulties"),
    (_with((*CL, "seqlen_truncate", "difficulty_type"), "percentile"), "must be 'value'"),
    (_with(CL, {}), "names no metric"),
    (_with((*LTD, "random_ltd_schedule", "min_value"), 256), "min_value (256) must not exceed"),
    (_with((*LTD, "random_ltd_schedule", "schedule_type"), "fixed_root"), "'fixed_linear'"),
    (_with((*LTD, "random_ltd_layer_num"), 3), "random_ltd_layer_num (3) must equal"),
    (_with((*LTD, "random_ltd_schedule", "min_value"), 8), "at least seq_per_step"),
    (_with(("data_efficiency", "enabled"), "yes"), "must be true or false"),
])
def test_bad_data_efficiency_configs(config, message):
    with pytest.raises(ModelConfigError) as e:
        parse_data_efficiency(config)
    assert message in str(e.value)


# -- the sampler -------------------------------------------------------------------------------


def _metric(name, kind, lo, hi, total=10, step=1):
    return {"min_difficulty": lo, "max_difficulty": hi, "schedule_type": "fixed_linear",
            "difficulty_type": kind,
            "schedule_config": {"total_curriculum_step": total, "difficulty_step": step}}


def _sampler(tmp_path, metrics, block_size=4):
    analysis_corpus(tmp_path)
    analyze(tmp_path, block_size, progress=False)
    index = DifficultyIndex(tmp_path, block_size)
    de = parse_data_efficiency({"enabled": True, "data_sampling": {
        "enabled": True, "curriculum_learning": {"enabled": True, "curriculum_metrics": metrics}}})
    return index, CurriculumSampler(index, de.curriculum.metrics)


def test_sampler_draws_only_windows_at_or_below_the_threshold(tmp_path):
    index, sampler = _sampler(tmp_path, {"vocab_rarity": _metric("v", "value", 0.0, 100.0)})
    rarity = np.asarray(index.values("vocab_rarity"))
    g = torch.Generator().manual_seed(0)
    for step in range(12):
        threshold = sampler.schedulers["vocab_rarity"].get_difficulty(step + 1)
        if threshold < rarity.min():
            with pytest.raises(ModelError, match="no training window"):
                sampler.batch(step, 8, g)
            continue
        x, y = sampler.batch(step, 8, g)
        assert torch.equal(x[:, 1:], y[:, :-1])
        admitted = {tuple(index.windows(np.array([i]))[0][0].tolist())
                    for i in np.flatnonzero(rarity <= threshold)}
        assert {tuple(row) for row in x.tolist()} <= admitted


def test_percentile_admits_deepspeeds_count(tmp_path):
    index, sampler = _sampler(tmp_path, {"voc": _metric("v", "percentile", 10, 100, 9, 10)})
    n = index.n_samples
    assert n >= 200
    order = np.asarray(index.order("vocab_rarity"))
    rarity = np.asarray(index.values("vocab_rarity"))
    for p in (10, 50, 90):
        got = sampler.eligible({"vocab_rarity": p})
        assert np.array_equal(got, np.sort(order[: (n // 100) * p]))
        # the easiest windows: none left out is easier than one admitted
        assert rarity[got].max() <= np.delete(rarity, got).min()
    assert len(sampler.eligible({"vocab_rarity": 100})) == n


def test_seqlen_truncate_shortens_windows_early(tmp_path):
    _, sampler = _sampler(tmp_path, {"seqlen_truncate": _metric("s", "value", 1, 4, 6)})
    g = torch.Generator().manual_seed(0)
    # curriculum step s + 1: floor(1 + 3 * (s + 1) / 6) -> steps 0..5 give 1, 2, 2, 3, 3, 4
    widths = [sampler.batch(s, 2, g)[0].shape[1] for s in range(6)]
    assert widths == [1, 2, 2, 3, 3, 4]


def test_seqlen_truncate_alone_needs_no_index(tmp_path):
    analysis_corpus(tmp_path)
    data = TokenData(tmp_path)
    metrics = parse_data_efficiency({"enabled": True, "data_sampling": {
        "enabled": True, "curriculum_learning": {"enabled": True, "curriculum_metrics": {
            "seqlen_truncate": _metric("s", "value", 8, 32, 4, 8)}}}}).curriculum.metrics
    sampler = CurriculumSampler(data, metrics, block_size=32)
    g = torch.Generator().manual_seed(0)
    # curriculum step s + 1: floor(8 + 24 * (s + 1) / 4) -> 14, 20, 26, 32 -> multiples of 8
    widths = [sampler.batch(s, 3, g)[0].shape[1] for s in range(5)]
    assert widths == [8, 16, 24, 32, 32]
    x, y = sampler.batch(0, 3, g)
    assert torch.equal(x[:, 1:], y[:, :-1])
    vocab = parse_data_efficiency(DS_CONFIG).curriculum.metrics
    with pytest.raises(ModelConfigError, match="needs the analyzer's index"):
        CurriculumSampler(data, vocab, block_size=32)


def test_data_efficiency_in_a_training_loop(tmp_path):
    from models.data import DataEfficiency
    from models.gpt2 import GPT2LMHead
    from models.testing import tiny_config

    analysis_corpus(tmp_path)
    analyze(tmp_path, 8, progress=False)
    cfg = json.loads(json.dumps(DS_CONFIG))
    ltd = cfg["data_efficiency"]["data_routing"]["random_ltd"]
    ltd["random_ltd_layer_id"], ltd["random_ltd_layer_num"] = [1], 1
    ltd["random_ltd_schedule"].update(min_value=4, max_value=8)
    ltd["random_ltd_schedule"]["schedule_config"].update(require_steps=4, seq_per_step=2)
    metrics = cfg["data_efficiency"]["data_sampling"]["curriculum_learning"]["curriculum_metrics"]
    metrics["seqlen_truncate"].update(min_difficulty=4, max_difficulty=8)
    metrics["seqlen_truncate"]["schedule_config"].update(total_curriculum_step=4,
                                                         difficulty_step=2)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = GPT2LMHead(tiny_config(vocab_size=16, n_positions=8, n_layer=3)).train()
    de = DataEfficiency.from_file(path, TokenData(tmp_path), block_size=8, n_layer=3)
    de.attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    widths, kept = [], []
    for step in range(5):
        de.begin_step(step)
        x, y = de.batch(step, 4, torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(x)[0].reshape(-1, 16), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        widths.append(x.shape[1])
        kept.append(de.ltd.kept)
    # seqlen: floor(4 + 4 * (s + 1) / 4) -> 5, 6, 7, 8 -> even; random-LTD: floor(4 + s) -> even
    assert widths == [4, 6, 6, 8, 8]
    assert kept == [4, 4, 6, 6, 8]
    with pytest.raises(ModelConfigError, match="must be the full sequence"):
        DataEfficiency.from_file(path, TokenData(tmp_path), block_size=16, n_layer=3)


def test_truncate_batch():
    x = torch.arange(12).view(2, 6)
    a, b = truncate_batch(x, x + 1, 3)
    assert a.tolist() == [[0, 1, 2], [6, 7, 8]]
    assert b.tolist() == [[1, 2, 3], [7, 8, 9]]
    with pytest.raises(ModelConfigError):
        truncate_batch(x, x, 0)


def test_config_file_errors(tmp_path):
    from models.data import load_data_efficiency

    with pytest.raises(ModelConfigError, match="cannot read"):
        load_data_efficiency(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="is not valid JSON"):
        load_data_efficiency(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text(json.dumps(DS_CONFIG))
    assert load_data_efficiency(tmp_path / "ok.json") == parse_data_efficiency(DS_CONFIG)
