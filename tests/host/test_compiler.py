"""The compiler: refusals name the limit, weights land where the layout says, artifacts
round-trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from host.compiler import CompileError, ModelShape, compile_model
from host.compiler.images import gapped
from hw.config import PRESETS
from hw.isa import assemble, decode_program

from .accel_helpers import hf_checkpoint

SMALL = ModelShape(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=256)


@pytest.mark.parametrize(
    ("shape", "config", "message"),
    [
        (dataclasses.replace(SMALL, n_head=4, n_embd=100), PRESETS["tiny"].with_devices(8),
         r"n_head \(4\) is not divisible by devices \(8\)"),
        (dataclasses.replace(SMALL, n_inner=250), PRESETS["tiny"].with_devices(4),
         r"MLP width \(250\) is not divisible by devices \(4\)"),
        (dataclasses.replace(SMALL, activation="erf"), PRESETS["tiny"],
         "GELU is the tanh form"),
        (SMALL, dataclasses.replace(PRESETS["tiny"], vbuf_words=2048),
         "the vector buffer needs .* words for one token; the config has vbuf_words=2048"),
        (dataclasses.replace(SMALL, n_layer=64, n_embd=512, n_head=8, n_inner=2048),
         PRESETS["tiny"], r"needs .* MiB in each HBM channel; the config has 16.0 MiB"),
        (dataclasses.replace(SMALL, n_positions=4096), PRESETS["tiny"],
         "job descriptor needs .* bytes of scalar area"),
        (dataclasses.replace(SMALL, vocab_size=10), PRESETS["tiny"].with_devices(4),
         "a vocabulary of 10 cannot be split over 4 devices"),
        (SMALL, dataclasses.replace(PRESETS["tiny"], imem_words=50),
         r"program has \d+ instructions; .* imem_words=50"),
    ],
)
def test_what_cannot_be_mapped_is_refused_by_name(shape, config, message):
    with pytest.raises(CompileError, match=message):
        compile_model(shape, config)


def test_weights_land_in_the_planned_layout(tmp_path):
    model = hf_checkpoint(tmp_path, 301, 32, 40, 2, 4)  # head dim 10, slices of 20: gaps
    config = PRESETS["tiny"].with_devices(2)
    compiled = compile_model(model, config)
    plan = compiled.plan
    assert plan.gaps
    state = {k: v.half().float().numpy() for k, v in model.state_dict().items()}
    cols = gapped(40, 2, plan.c_l, plan.c_lp)
    for d in range(2):
        image = compiled.images[d]
        layer1 = plan.hbm["layers"].offset + plan.layer_stride
        # c_fc rows of device d: output features d*80 .. d*80+79, inputs in the gapped layout
        got = image.read_matrix(layer1 + plan.layer_regions["c_fc"].offset, plan.ldb_c,
                                plan.i_l, plan.cp).astype(np.float32)
        want = state["transformer.h.1.mlp.c_fc.weight"].T[d * 80 : (d + 1) * 80]
        assert np.array_equal(got[:, cols], want)
        gap = np.setdiff1d(np.arange(plan.cp), cols)
        assert not got[:, gap].any()
        # the embedding table is whole on every device
        wte = image.read_matrix(plan.hbm["wte"].offset, plan.ldb_c, 301, plan.cp)
        assert np.array_equal(wte[:, cols].astype(np.float32), state["transformer.wte.weight"])


def test_artifacts_round_trip(tmp_path):
    model = hf_checkpoint(tmp_path / "m", 301, 32, 48, 2, 3)
    compiled = compile_model(model, PRESETS["tiny"])
    compiled.save(tmp_path / "out")
    words = np.frombuffer((tmp_path / "out" / "device0.bin").read_bytes(), np.uint64)
    assert decode_program(words) == compiled.programs[0]
    assert assemble((tmp_path / "out" / "device0.s").read_text()) == compiled.programs[0]
    banks = sorted(p.name for p in (tmp_path / "out" / "device0_hbm").iterdir())
    assert banks == [f"hbm{k:02d}.bin" for k in range(4)]
    symbols = json.loads((tmp_path / "out" / "symbols.json").read_text())
    assert symbols["partition"]["heads_local"] == 3
    assert symbols["hbm"]["wte"]["offset"] == PRESETS["tiny"].scalar_area_bytes


def test_compile_and_perf_commands(tmp_path, tiny_checkpoint, capsys):
    from host.cli import main

    assert main(["compile", "--model", str(tiny_checkpoint), "--devices", "3", "--out",
                 str(tmp_path / "c"), "--trace", "--input-len", "3", "--output-len", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (tmp_path / "c" / "device2.s").is_file()
    assert (tmp_path / "c" / "trace.csv").is_file()
    assert summary["trace"]["cycles"] == pytest.approx(sum(summary["trace"]["breakdown"]
                                                           .values()))
    assert main(["perf", "--model", "gpt2-345m", "--config", "u280", "--devices", "2",
                 "--input-len", "16", "--output-len", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "projection" in result["label"]
    assert result["total_ms"] > result["prefill_ms"] > 0
    assert result["ms_per_token"] >= result["floor_ms_per_token"]
    assert result["total_ms"] == pytest.approx(result["prefill_ms"]
                                               + 7 * result["ms_per_token"])
    assert main(["perf", "--model", "gpt2-1.5b", "--config", "u280", "--devices", "4"]) == 2
    assert "n_head (25) is not divisible by devices (4)" in capsys.readouterr().err
