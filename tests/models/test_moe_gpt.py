"""MoE-GPT: configuration, checkpoint layout and round trip, the GPT2LMHead contract (KV cache
included), auxiliary losses without global state, PR-MoE and DTS variants."""

from __future__ import annotations

import json

import pytest
import torch

import models
from models.errors import ModelConfigError
from models.moe import MoE, MoEGPT, MoEGPTConfig
from models.testing import tiny_config


def _config(**moe) -> MoEGPTConfig:
    return MoEGPTConfig.from_dense(tiny_config(n_layer=4), **{"moe_num_experts": 4, **moe})


def _model(seed=0, **moe) -> MoEGPT:
    torch.manual_seed(seed)
    return MoEGPT(_config(**moe))


def test_moe_blocks_sit_every_n_layers():
    assert _config(moe_every=2).moe_layers == [1, 3]
    assert _config(moe_every=1).moe_layers == [0, 1, 2, 3]
    assert _config(moe_every=3).moe_layers == [2]
    model = _model(moe_every=2)
    assert [i for i, _ in model.moe_blocks()] == [1, 3]
    assert all(isinstance(m, MoE) for _, m in model.moe_blocks())


def test_checkpoint_keys_are_plain():
    keys = set(_model(moe_every=2).state_dict())
    assert "transformer.h.1.mlp.gate.weight" in keys
    assert "transformer.h.1.mlp.experts.3.c_fc.weight" in keys
    assert "transformer.h.1.mlp.experts.3.c_proj.bias" in keys
    assert "transformer.h.0.mlp.c_fc.weight" in keys  # dense block: GPT-2's names
    assert _model().state_dict()["transformer.h.1.mlp.gate.weight"].shape == (32, 4)


def test_save_and_load_round_trip_through_load_model(tmp_path):
    model = _model(moe_every=2, moe_top_k=2).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "moe_gpt2"
    assert config["moe_num_experts"] == 4
    loaded = models.load_model(tmp_path)
    assert isinstance(loaded, MoEGPT)
    ids = torch.randint(0, 64, (2, 12))
    assert torch.equal(model(ids)[0], loaded(ids)[0])


def test_incremental_decode_with_the_kv_cache_equals_the_full_forward():
    model = _model(moe_every=1, moe_top_k=2).eval()
    ids = torch.randint(0, 64, (1, 10))
    full, _ = model(ids)
    logits, past = model(ids[:, :6])
    steps = [logits]
    for t in range(6, 10):
        logits, past = model(ids[:, t:t + 1], past)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert len(past) == 4
    assert past[0][0].shape == (1, 2, 10, 16)


def test_generation_works_and_is_greedy_deterministic():
    model = _model(moe_top_k=2).eval()
    a = model.generate([1, 2, 3], 5)
    assert a == model.generate([1, 2, 3], 5)
    # the reference: greedy decoding by a full forward over the whole sequence at every step
    # (no KV cache), argmax of the last position
    ids = [1, 2, 3]
    with torch.no_grad():
        for _ in range(5):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert a == ids[3:]


def test_auxiliary_losses_belong_to_the_model_and_its_last_forward():
    a, b = _model(seed=0).train(), _model(seed=1).train()
    assert a.auxiliary_losses() == {}
    a(torch.randint(0, 64, (2, 16)))
    first = {k: v.item() for k, v in a.auxiliary_losses().items()}
    assert set(first) == {"moe_aux_loss", "moe_z_loss"}
    b(torch.randint(0, 64, (4, 16)))  # another model's forward leaves a's losses alone
    assert {k: v.item() for k, v in a.auxiliary_losses().items()} == first
    # weighted sums over blocks, from the blocks' own unweighted values
    coef = a.config.moe_aux_loss_coef
    assert first["moe_aux_loss"] == pytest.approx(coef * sum(x.item() for x in a.last_aux.l_aux))
    a.auxiliary_losses()["moe_aux_loss"].backward()
    assert a.transformer.h[1].mlp.gate.weight.grad.abs().sum() > 0


def test_pyramid_residual_moe_has_per_block_expert_counts():
    model = _model(moe_every=1, moe_num_experts=[2, 2, 4, 8], moe_use_residual=True)
    counts = [m.num_experts for _, m in model.moe_blocks()]
    assert counts == [2, 2, 4, 8]
    assert all(m.use_residual for _, m in model.moe_blocks())
    assert "transformer.h.3.mlp.experts.7.c_fc.weight" in model.state_dict()
    assert "transformer.h.3.mlp.residual_mlp.c_fc.weight" in model.state_dict()
    logits, _ = model.train()(torch.randint(0, 64, (2, 8)))
    assert torch.isfinite(logits).all()
    # block 3 at inference against the residual-MoE rule written out (top-1, renormalised, so
    # the chosen expert's weight is 1): out = c0 * expert_argmax(x) + c1 * residual_mlp(x),
    # (c0, c1) = softmax(x @ coefficient.weight + coefficient.bias)
    moe = model.eval().transformer.h[3].mlp
    x = torch.randn(10, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = moe(x)[0]
        chosen = (x @ moe.gate.weight).argmax(dim=1)  # (10,)
        assert len(set(chosen.tolist())) > 1
        coef = (x @ moe.coefficient.weight + moe.coefficient.bias).softmax(dim=1)  # (10, 2)
        want = torch.stack([coef[s, 0] * moe.experts[int(e)](x[s : s + 1])[0]
                            + coef[s, 1] * moe.residual_mlp(x[s : s + 1])[0]
                            for s, e in enumerate(chosen)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_dts_gate_model_routes_densely_at_the_start_of_training():
    model = _model(moe_gate="dts", moe_top_k=1, moe_dts_anneal_steps=10).train()
    ids = torch.randint(0, 64, (2, 16))
    model.begin_train_step(0, seed=1)
    model(ids)
    dense_start = model.train_metrics()["moe_active_experts"]
    model.begin_train_step(10, seed=1)
    model(ids)
    sparse_end = model.train_metrics()["moe_active_experts"]
    assert dense_start > 3.0
    assert sparse_end < dense_start
    model.eval()(ids)
    assert model.train_metrics()["moe_active_experts"] == 1.0  # top-1 at inference


def test_routing_randomness_is_a_function_of_seed_and_step():
    model = _model(moe_top_k=1, moe_capacity_factor=0.5, moe_noisy_gate_policy="RSample").train()
    ids = torch.randint(0, 64, (2, 16))

    def logits_at(step):
        model.begin_train_step(step, seed=3)
        return model(ids)[0]

    assert torch.equal(logits_at(5), logits_at(5))
    assert not torch.equal(logits_at(5), logits_at(6))


@pytest.mark.parametrize(
    ("moe", "message"),
    [
        ({"moe_top_k": 5}, r"^moe_top_k \(5\) must not exceed num_experts \(4\)$"),
        ({"moe_capacity_factor": 0.0}, r"^moe_capacity_factor must be > 0, not 0.0$"),
        ({"moe_every": 5}, r"^moe_every \(5\) exceeds n_layer \(4\)"),
        ({"moe_num_experts": [4, 4, 4]}, r"^moe_num_experts lists 3 counts but there are 2 MoE"),
        ({"moe_gate": "hash"}, r"^moe_gate must be one of"),
        ({"moe_drop_policy": "random"}, r"^moe_drop_policy must be one of"),
        ({"moe_dts_threshold": 0.0}, r"^DTS threshold must be in"),
    ],
)
def test_bad_moe_configs_are_refused(moe, message):
    with pytest.raises(ModelConfigError, match=message):
        _config(**moe)
