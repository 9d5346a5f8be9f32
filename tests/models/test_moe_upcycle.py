"""Sparse upcycling: experts copied from the dense MLPs, fresh routers, and logits equal to the
dense model's at initialisation (<= 1e-5), through the API and through `tandem upcycle`."""

from __future__ import annotations

import pytest
import torch

import models
from host.cli import main as tandem
from models.gpt2 import GPT2LMHead
from models.moe import MoEGPT, upcycle
from models.testing import tiny_config


def _dense(seed=0) -> GPT2LMHead:
    torch.manual_seed(seed)
    model = GPT2LMHead(tiny_config(n_layer=4))
    with torch.no_grad():  # trained-looking weights: biases and larger MLPs matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize(
    ("experts", "every", "top_k", "extra"),
    [
        (4, 2, 1, {}),
        (4, 2, 2, {}),
        (8, 1, 3, {}),
        ([2, 6], 2, 2, {}),
        (4, 1, 2, {"moe_use_residual": True}),
    ],
)
def test_upcycled_logits_equal_the_dense_model(experts, every, top_k, extra):
    dense = _dense()
    moe = upcycle(dense, experts, every=every, top_k=top_k, **extra)
    ids = torch.randint(0, 64, (3, 20))
    want = dense(ids)[0]
    got = moe(ids)[0]
    assert (got - want).abs().max().item() <= 1e-5
    # routers are fresh, so the routing is not trivial: several experts are in use
    moe(ids)
    used = sum(int((c > 0).sum()) for c in moe.last_aux.exp_counts)
    assert used > len(moe.moe_blocks())


def test_upcycling_copies_mlps_into_every_expert_and_draws_new_routers():
    dense = _dense()
    moe = upcycle(dense, 4, every=2, top_k=2, seed=5)
    state, dense_state = moe.state_dict(), dense.state_dict()
    for e in range(4):
        assert torch.equal(state[f"transformer.h.1.mlp.experts.{e}.c_fc.weight"],
                           dense_state["transformer.h.1.mlp.c_fc.weight"])
    assert torch.equal(state["transformer.h.0.attn.c_attn.weight"],
                       dense_state["transformer.h.0.attn.c_attn.weight"])
    router = state["transformer.h.1.mlp.gate.weight"]
    assert router.std().item() == pytest.approx(0.02, rel=0.3)
    assert torch.equal(router, upcycle(dense, 4, 2, 2, seed=5).state_dict()[
        "transformer.h.1.mlp.gate.weight"])
    assert moe.config.moe_renormalize
    assert not moe.config.moe_eval_drop_tokens


def test_without_renormalisation_the_equivalence_breaks():
    # the control: top-1 with raw probabilities scales each MLP output by p < 1
    dense = _dense()
    moe = upcycle(dense, 4, every=2, top_k=1, moe_renormalize=False)
    ids = torch.randint(0, 64, (2, 16))
    assert (moe(ids)[0] - dense(ids)[0]).abs().max().item() > 1e-3


def test_upcycle_command_writes_an_equivalent_checkpoint(tmp_path, capsys):
    dense = _dense()
    dense.save_pretrained(tmp_path / "dense")
    (tmp_path / "dense" / "tokenizer.json").write_text("{}")
    code = tandem(["upcycle", "--from", str(tmp_path / "dense"), "--out", str(tmp_path / "moe"),
                   "--experts", "4", "--every", "2", "--top-k", "2"])
    assert code == 0
    assert '"moe_blocks": [1, 3]' in capsys.readouterr().out
    moe = models.load_model(tmp_path / "moe")
    assert isinstance(moe, MoEGPT)
    assert (tmp_path / "moe" / "tokenizer.json").is_file()
    ids = torch.randint(0, 64, (2, 16))
    assert (moe(ids)[0] - dense(ids)[0]).abs().max().item() <= 1e-5


def test_upcycle_command_refuses_an_moe_checkpoint(tmp_path, capsys):
    upcycle(_dense(), 4).save_pretrained(tmp_path / "moe")
    code = tandem(["upcycle", "--from", str(tmp_path / "moe"), "--out", str(tmp_path / "x"),
                   "--experts", "4"])
    err = capsys.readouterr().err
    assert code == 2
    assert "upcycle a dense gpt2 checkpoint" in err
    assert err.count("\n") == 1


def test_upcycle_command_refuses_top_k_above_experts(tmp_path, capsys):
    _dense().save_pretrained(tmp_path / "dense")
    code = tandem(["upcycle", "--from", str(tmp_path / "dense"), "--out", str(tmp_path / "x"),
                   "--experts", "2", "--top-k", "3"])
    assert code == 2
    assert "moe_top_k (3) must not exceed num_experts (2)" in capsys.readouterr().err
