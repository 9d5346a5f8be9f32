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
from models.testing import hf_checkpoint

SMALL = ModelShape(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=256)


@pytest.mark.parametrize(
    ("shape", "config", "message"),
    [
        (dataclasses.replace(SMALL, n_head=4, n_embd=100), PRESETS["tiny"].with_devices(8),
         r"n_head \(4\) is fewer than devices \(8\)"),
        (dataclasses.replace(SMALL, n_inner=24), PRESETS["tiny"].with_devices(4),
         r"the MLP width \(24\) is 3 beat\(s\) of 8 values .* cannot be split over 4 devices"),
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
    """Hidden feature f (of 50) in this test's slotted layout: 7 beats of 8 split 3/2/2 over
    3 devices (24, 16 and 10 values), each device's share in a slot of 24 words."""
    return f if f < 40 else f + 8  # device 2's 10 values start at 2 * 24


def _mlp_pos(j):
    """MLP feature j (of 200): 25 beats split 9/8/8 (72, 64, 64 values) in slots of 72."""
    return j if j < 136 else j + 8  # device 2's values start at 2 * 72


def _head_pos(f):
    """Input feature f of attn.c_proj: 5 heads of 10, split 2/2/1, each head padded to 16
    words in slots of 2 heads; device 2's second head slot stays empty."""
    return (f // 10) * 16 + f % 10


def test_weights_land_in_the_planned_layout(tmp_path):
    """Every weight region of every device's image, element by element, against positions
    written out here from the layout rules (not from the compiler's helpers)."""
    model = hf_checkpoint(tmp_path, vocab=301, n_pos=32, n_embd=50, n_layer=2,
                          n_head=5)  # head dim 10, uneven 3-device split
    config = PRESETS["tiny"].with_devices(3)
    compiled = compile_model(model, config)
    plan = compiled.plan
    # the layout this test derives by hand: C=50, I=200 over 3 devices, align 8, 4 HBM ports
    assert (plan.head_counts, plan.hidden_counts, plan.mlp_counts) == ([2, 2, 1], [24, 16, 10],
                                                                  [72, 64, 64])
    assert (plan.hidden_slot, plan.hidden_padded, plan.head_dim, plan.head_dim_padded,
            plan.heads_padded) == (24, 72, 10, 16, 96)
    assert (plan.mlp_slot, plan.mlp_padded, plan.qkv_rows, plan.vocab_slot) == (72, 216, 96, 104)
    assert (plan.ldb_hidden, plan.ldb_heads, plan.ldb_mlp) == (9, 12, 27)
    # the regions checked below are all the image holds besides the KV cache
    assert set(plan.hbm) == {"wte", "wpe", "lnf", "cmask", "layers", "kv"}
    assert set(plan.layer_regions) == {"par", "c_attn", "c_proj", "c_fc", "c_fcproj"}
    state = {k: v.half().float().numpy() for k, v in model.state_dict().items()}

    def spread(rows, n, width, pos):  # (R, n) -> (R, width), column f at pos(f), zeros else
        out = np.zeros((rows.shape[0], width), np.float32)
        for f in range(n):
            out[:, pos(f)] = rows[:, f]
        return out

    def on_hidden(rows):
        return spread(rows, 50, 72, _hidden_pos)

    def vec(v):
        return on_hidden(v[None])[0]

    heads = {0: (0, 2), 1: (2, 2), 2: (4, 1)}  # device -> (first head, heads)
    cols = {0: (0, 24), 1: (24, 16), 2: (40, 10)}  # device -> (first column, columns)
    mlp = {0: (0, 72), 1: (72, 64), 2: (136, 64)}
    for d in range(3):
        image = compiled.images[d]

        def matrix(offset, ldb, rows, image=image):  # every column the rows hold
            return image.read_matrix(offset, ldb, rows, ldb * 8).astype(np.float32)

        # embeddings, whole on every device; wte has 3 x 104 rows, the last 11 zero
        want = np.zeros((312, 72), np.float32)
        want[:301] = on_hidden(state["transformer.wte.weight"])
        assert np.array_equal(matrix(plan.hbm["wte"].offset, 9, 312), want)
        assert np.array_equal(matrix(plan.hbm["wpe"].offset, 9, 32),
                              on_hidden(state["transformer.wpe.weight"]))
        lnf = image.read_vector(plan.hbm["lnf"].offset, 144).astype(np.float32)
        assert np.array_equal(lnf[:72], vec(state["transformer.ln_f.weight"]))
        assert np.array_equal(lnf[72:], vec(state["transformer.ln_f.bias"]))
        cmask = image.read_vector(plan.hbm["cmask"].offset, 72)
        assert np.array_equal(cmask, vec(np.ones(50)))
        h0, hn = heads[d]
        c0, cn = cols[d]
        m0, mn = mlp[d]
        for layer in range(2):
            p = f"transformer.h.{layer}."
            base = plan.hbm["layers"].offset + layer * plan.layer_stride
            at = {k: base + r.offset for k, r in plan.layer_regions.items()}
            # c_attn: q, k, v of this device's heads, each head's 10 rows padded to 16
            w_attn, b_attn = state[p + "attn.c_attn.weight"], state[p + "attn.c_attn.bias"]
            want_w, want_b = np.zeros((96, 50), np.float32), np.zeros(96, np.float32)
            for part in range(3):
                for h in range(hn):
                    for j in range(10):
                        src = part * 50 + (h0 + h) * 10 + j  # HF Conv1D: (in, out)
                        want_w[(part * hn + h) * 16 + j] = w_attn[:, src]
                        want_b[(part * hn + h) * 16 + j] = b_attn[src]
            assert np.array_equal(matrix(at["c_attn"], 9, 96), on_hidden(want_w))
            # attn.c_proj: this device's output columns, inputs in the heads-padded layout
            want = np.zeros((24, 96), np.float32)
            want[:cn] = spread(state[p + "attn.c_proj.weight"][:, c0 : c0 + cn].T, 50, 96,
                               _head_pos)
            assert np.array_equal(matrix(at["c_proj"], 12, 24), want)
            # mlp.c_fc: this device's MLP columns, inputs in the hidden layout
            want = np.zeros((72, 72), np.float32)
            want[:mn] = on_hidden(state[p + "mlp.c_fc.weight"][:, m0 : m0 + mn].T)
            assert np.array_equal(matrix(at["c_fc"], 9, 72), want)
            # mlp.c_proj: this device's output columns over the MLP layout
            want = np.zeros((24, 216), np.float32)
            want[:cn] = spread(state[p + "mlp.c_proj.weight"][:, c0 : c0 + cn].T, 200, 216,
                               _mlp_pos)
            assert np.array_equal(matrix(at["c_fcproj"], 27, 24), want)
            # parameter vector: ln1 g/b (72 each), attn bias (96), proj bias (24),
            # ln2 g/b (72 each), fc bias (72), fc-proj bias (24), in that order
            par = image.read_vector(at["par"], 504).astype(np.float32)

            def leading(v, n, width):  # the first n values, zero-padded
                return np.pad(v[:n], (0, width - n))

            fields = [vec(state[p + "ln_1.weight"]), vec(state[p + "ln_1.bias"]), want_b,
                      leading(state[p + "attn.c_proj.bias"][c0:], cn, 24),
                      vec(state[p + "ln_2.weight"]), vec(state[p + "ln_2.bias"]),
                      leading(state[p + "mlp.c_fc.bias"][m0:], mn, 72),
                      leading(state[p + "mlp.c_proj.bias"][c0:], cn, 24)]
            assert np.array_equal(par, np.concatenate(fields))


def test_artifacts_round_trip(tmp_path):
    model = hf_checkpoint(tmp_path / "m", vocab=301, n_pos=32, n_embd=48, n_layer=2, n_head=3)
    compiled = compile_model(model, PRESETS["tiny"])
    compiled.save(tmp_path / "out")
    words = np.frombuffer((tmp_path / "out" / "device0.bin").read_bytes(), np.uint64)
    assert decode_program(words) == compiled.programs[0]
    assert assemble((tmp_path / "out" / "device0.s").read_text()) == compiled.programs[0]
    banks = sorted(p.name for p in (tmp_path / "out" / "device0_hbm").iterdir())
    assert banks == [f"hbm{k:02d}.bin" for k in range(4)]
    symbols = json.loads((tmp_path / "out" / "symbols.json").read_text())
    assert symbols["partition"]["slot_heads"] == 3
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
    assert main(["perf", "--model", "gpt2-1.5b", "--config", "u280", "--devices", "32"]) == 2
    assert "n_head (25) is fewer than devices (32)" in capsys.readouterr().err
