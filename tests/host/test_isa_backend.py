"""Ladder rung 3: the `isa` backend against the golden torch model, and its CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import models
from host.cli import main
from models.testing import hf_checkpoint

from .accel_helpers import U_FP16, assert_agrees_with_golden, compare_with_golden

# (vocab, n_positions, n_embd, n_layer, n_head, devices): odd head dims and vocabularies,
# padded layouts with gaps, and every device count
CASES = [
    pytest.param(1001, 48, 48, 2, 3, 1, True, id="3-heads-hd16-1dev"),
    pytest.param(503, 40, 40, 2, 4, 2, True, id="hd10-gapped-2dev"),
    pytest.param(97, 32, 72, 3, 12, 4, True, id="12-heads-hd6-vocab97-4dev"),
    pytest.param(4096, 64, 64, 2, 4, 4, True, id="vocab4096-4dev"),
    pytest.param(300, 24, 24, 1, 2, 2, False, id="ctx24-untied-head-2dev"),
]


@pytest.mark.parametrize(("vocab", "n_pos", "n_embd", "n_layer", "n_head", "devices", "tied"),
                         CASES)
def test_random_configs_agree_with_golden(tmp_path, vocab, n_pos, n_embd, n_layer, n_head,
                                          devices, tied):
    model = hf_checkpoint(tmp_path, vocab=vocab, n_pos=n_pos, n_embd=n_embd, n_layer=n_layer,
                          n_head=n_head, tied=tied)
    prompt = [(7 * i + 3) % vocab for i in range(5)]
    result = compare_with_golden(model, prompt, min(14, n_pos - 5), devices)
    assert_agrees_with_golden(result)


def test_default_model_agrees_with_golden():
    model = models.load_model(models.default_model_dir())
    tok = models.load_tokenizer(models.default_model_dir())
    prompt = tok.encode("import os\nimport sys\n\n\ndef main(argv):\n    parser = ")
    for devices in (1, 2, 4):
        result = compare_with_golden(model, prompt, 12, devices)
        assert_agrees_with_golden(result)
        err = np.abs(result.logits - result.golden_logits)
        print(f"default model, {devices} device(s): {len(result.mismatches)} token mismatches "
              f"in {len(result.tokens)} steps, largest logit error {err.max():.4g} "
              f"(largest |golden logit| {np.abs(result.golden_logits).max():.3g})")


def test_results_do_not_depend_on_the_device_count(tmp_path):
    """Every output element is computed whole on one device in the same order, so 1, 2 and 4
    devices give bit-identical logits and tokens."""
    model = hf_checkpoint(tmp_path, vocab=211, n_pos=32, n_embd=64, n_layer=2, n_head=4)
    runs = [compare_with_golden(model, [5, 6, 7], 8, d) for d in (1, 2, 4)]
    for other in runs[1:]:
        assert other.tokens == runs[0].tokens
        assert np.array_equal(other.logits, runs[0].logits)


def _kv_tolerance(want: np.ndarray) -> np.ndarray:
    """Allowed |device - golden| for cached keys or values `want` (positions, head dim).

    FP16 error analysis, u = 2**-11: a key or value is one dot product, accumulated in FP32
    from exact products (negligible) and rounded to FP16 once: u |k|. Its FP16 weights and its
    FP16 LayerNorm input each add <= u relative to the head vector's scale (max |k| over the
    head dim), LayerNorm's rsqrt unit <= 0.52 ulp ~ u, and the block before it (layer 1 of
    this 2-block model) passes on 3u (one per residual-path rounding, as in
    accel_helpers.LOGIT_SCALE_TOL), 6u of the scale in all; the final rounding is allowed 2u:
    |err| <= 2u |k| + 6u max|k|. Measured: at most 2.6u of the scale beyond 2u |k| (~2x
    headroom)."""
    scale = np.abs(want).max(axis=-1, keepdims=True)
    return 2 * U_FP16 * np.abs(want) + 6 * U_FP16 * scale


def test_kv_cache_in_hbm_holds_the_golden_keys_and_values(tmp_path):
    import torch

    from host.runtime import GenerationRequest
    from host.runtime.cluster_backend import ClusterBackend
    from hw.config import PRESETS

    model = hf_checkpoint(tmp_path, vocab=211, n_pos=32, n_embd=48, n_layer=2, n_head=3)
    backend = ClusterBackend(model, PRESETS["tiny"])
    prompt = [9, 8, 7, 6]
    tokens = [s.token for s in backend.stream(GenerationRequest(prompt, 5))]
    with torch.no_grad():
        _, present = model(torch.tensor([prompt + tokens[:-1]]))
    plan, image = backend.compiled.plan, backend.cluster.image(0)
    n = len(prompt) + len(tokens) - 1  # positions the device appended
    for layer in range(2):
        kv_base = plan.hbm["kv"].offset + layer * plan.kv_stride
        for h in range(3):
            k = image.read_matrix(kv_base + plan.kv_regions[f"k{h}"].offset,
                                  plan.ldb_head_dim, n, plan.head_dim)
            vt = image.read_matrix(kv_base + plan.kv_regions[f"v{h}"].offset, plan.ldb_positions,
                                   plan.head_dim, n)
            want_k = present[layer][0][0, h].numpy()  # (T, hd)
            want_v = present[layer][1][0, h].numpy()
            for got, want in ((k, want_k), (vt.T, want_v)):
                err = np.abs(got.astype(np.float32) - want)
                assert (err <= _kv_tolerance(want)).all()


def test_generate_cli_isa_json(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt", "def f(x):",
                 "--max-new-tokens", "4", "--backend", "isa", "--devices", "3", "--json",
                 "--return-logits"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["backend"] == "isa"
    assert record["devices"] == 3
    model = models.load_model(tiny_checkpoint)
    assert record["tokens"] == model.generate(record["prompt_tokens"], 4)
    for step in record["steps"]:
        assert step["cycles"] > 0
        assert step["ms"] == pytest.approx(step["cycles"] / 200e3, rel=1e-6)  # tiny: 200 MHz
        assert sum(step["breakdown"].values()) == pytest.approx(step["cycles"], abs=1)
        assert len(step["logits"]) == 512
        assert int(np.argmax(step["logits"])) == step["token"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--temperature", "0.7"], "decodes greedily"),
        (["--devices", "5"], r"n_head \(3\) is fewer than devices \(5\)"),
        (["--config", "nope"], "neither a preset"),
    ],
)
def test_isa_bad_input_is_one_line(tiny_checkpoint, capsys, extra, message):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt", "x",
                 "--max-new-tokens", "2", "--backend", "isa", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.search(message, err[0])
