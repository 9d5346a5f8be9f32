"""The compiler: refusals name the limit, weights land where the layout says, artifacts
round-trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from host.compiler import CompileError, ModelShape, compile_model
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


def _hidden_pos(f):
    """Hidden feature f in the gapped layout of this test's plan: 2 slices of 20, each padded
    to 24 words (align 8)."""
    return (f // 20) * 24 + f % 20


def _head_pos(f):
    """Input feature f of attn.c_proj (4 heads of 10, each padded to 16 words)."""
    return (f // 10) * 16 + f % 10


def test_weights_land_in_the_planned_layout(tmp_path):
    """Every weight region of every device's image, element by element, against positions
    written out here from the layout rules (not from the compiler's helpers)."""
    model = hf_checkpoint(tmp_path, 301, 32, 40, 2, 4)  # head dim 10, slices of 20: gaps
    config = PRESETS["tiny"].with_devices(2)
    compiled = compile_model(model, config)
    plan = compiled.plan
    # the layout this test derives by hand: C=40 over 2 devices, align 8, 4 HBM ports
    assert (plan.c_l, plan.c_lp, plan.cp, plan.hd, plan.hdp, plan.hp) == (20, 24, 48, 10, 16, 64)
    assert (plan.i_l, plan.i_lp, plan.ip, plan.qkv_rows, plan.vocab_local) == (80, 80, 160, 96,
                                                                                152)
    assert (plan.ldb_c, plan.ldb_h, plan.ldb_i) == (6, 8, 20)
    # the regions checked below are all the image holds besides the KV cache
    assert set(plan.hbm) == {"wte", "wpe", "lnf", "cmask", "layers", "kv"}
    assert set(plan.layer_regions) == {"par", "c_attn", "c_proj", "c_fc", "c_fcproj"}
    state = {k: v.half().float().numpy() for k, v in model.state_dict().items()}
    hid = [_hidden_pos(f) for f in range(40)]

    def on_hidden(rows):  # (R, 40) -> (R, 48), zeros in the gaps
        out = np.zeros((rows.shape[0], 48), np.float32)
        for f in range(40):
            out[:, hid[f]] = rows[:, f]
        return out

    for d in range(2):
        image = compiled.images[d]

        def matrix(offset, ldb, rows, image=image):  # every column the rows hold
            return image.read_matrix(offset, ldb, rows, ldb * 8).astype(np.float32)

        # embeddings, whole on every device; wte has 2 x 152 rows, the last 3 zero
        want = np.zeros((304, 48), np.float32)
        want[:301] = on_hidden(state["transformer.wte.weight"])
        assert np.array_equal(matrix(plan.hbm["wte"].offset, 6, 304), want)
        assert np.array_equal(matrix(plan.hbm["wpe"].offset, 6, 32),
                              on_hidden(state["transformer.wpe.weight"]))
        lnf = image.read_vector(plan.hbm["lnf"].offset, 96).astype(np.float32)
        assert np.array_equal(lnf[:48], on_hidden(state["transformer.ln_f.weight"][None])[0])
        assert np.array_equal(lnf[48:], on_hidden(state["transformer.ln_f.bias"][None])[0])
        cmask = image.read_vector(plan.hbm["cmask"].offset, 48)
        assert np.array_equal(cmask, on_hidden(np.ones((1, 40)))[0])
        for layer in range(2):
            p = f"transformer.h.{layer}."
            base = plan.hbm["layers"].offset + layer * plan.layer_stride
            at = {k: base + r.offset for k, r in plan.layer_regions.items()}
            # c_attn: q, k, v of local heads 2d, 2d+1, each head's 10 rows padded to 16
            w_attn, b_attn = state[p + "attn.c_attn.weight"], state[p + "attn.c_attn.bias"]
            want_w, want_b = np.zeros((96, 40), np.float32), np.zeros(96, np.float32)
            for part in range(3):
                for h in range(2):
                    for j in range(10):
                        src = part * 40 + (2 * d + h) * 10 + j  # HF Conv1D: (in, out)
                        want_w[(part * 2 + h) * 16 + j] = w_attn[:, src]
                        want_b[(part * 2 + h) * 16 + j] = b_attn[src]
            assert np.array_equal(matrix(at["c_attn"], 6, 96), on_hidden(want_w))
            # attn.c_proj: output features 20d..20d+19, inputs in the heads-padded layout
            w_proj = state[p + "attn.c_proj.weight"]
            want = np.zeros((20, 64), np.float32)
            for r in range(20):
                for f in range(40):
                    want[r, _head_pos(f)] = w_proj[f, 20 * d + r]
            assert np.array_equal(matrix(at["c_proj"], 8, 20), want)
            # mlp.c_fc: output features 80d..80d+79, inputs in the hidden layout
            w_fc = state[p + "mlp.c_fc.weight"]
            assert np.array_equal(matrix(at["c_fc"], 6, 80),
                                  on_hidden(w_fc[:, 80 * d : 80 * d + 80].T))
            # mlp.c_proj: output features 20d..20d+19 over all 160 MLP features (no gaps)
            w_fcproj = state[p + "mlp.c_proj.weight"]
            assert np.array_equal(matrix(at["c_fcproj"], 20, 20),
                                  w_fcproj[:, 20 * d : 20 * d + 20].T)
            # parameter vector: ln1 g/b (48 each), attn bias (96), proj bias (24),
            # ln2 g/b (48 each), fc bias (80), fc-proj bias (24), in that order
            par = image.read_vector(at["par"], 416).astype(np.float32)
            fields = [on_hidden(state[p + "ln_1.weight"][None])[0],
                      on_hidden(state[p + "ln_1.bias"][None])[0], want_b,
                      np.pad(state[p + "attn.c_proj.bias"][20 * d : 20 * d + 20], (0, 4)),
                      on_hidden(state[p + "ln_2.weight"][None])[0],
                      on_hidden(state[p + "ln_2.bias"][None])[0],
                      state[p + "mlp.c_fc.bias"][80 * d : 80 * d + 80],
                      np.pad(state[p + "mlp.c_proj.bias"][20 * d : 20 * d + 20], (0, 4))]
            assert np.array_equal(par, np.concatenate(fields))


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
