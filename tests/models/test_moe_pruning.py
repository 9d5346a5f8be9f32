"""Expert pruning: usage measured on calibration batches, the N most-used experts kept, and
routing unchanged for every token whose experts survive."""

from __future__ import annotations

import pytest
import torch

import models
from host.cli import main as tandem
from models.errors import ModelConfigError
from models.moe import MoEGPT, MoEGPTConfig, expert_usage, prune_experts
from models.testing import patterned_corpus, tiny_config


def _model(**moe) -> MoEGPT:
    torch.manual_seed(0)
    config = MoEGPTConfig.from_dense(tiny_config(), **{"moe_num_experts": 6, "moe_every": 1,
                                                       "moe_top_k": 2, **moe})
    model = MoEGPT(config)
    with torch.no_grad():  # a confident router, so usage is far from uniform
        for _, moe_layer in model.moe_blocks():
            moe_layer.gate.weight.mul_(50)
    return model.eval()


def test_usage_counts_every_routed_token():
    model = _model()
    batches = [torch.randint(0, 64, (2, 16)) for _ in range(3)]
    usage = expert_usage(model, batches)
    assert sorted(usage) == [0, 1]
    assert all(u.sum().item() == 3 * 2 * 16 * 2 for u in usage.values())


def test_pruning_keeps_the_most_used_experts_and_their_routing():
    model = _model()
    ids = torch.randint(0, 64, (4, 16))
    usage = expert_usage(model, [ids])
    pruned, kept = prune_experts(model, 4, usage)
    for block, counts in usage.items():
        top = sorted(range(6), key=lambda e: -int(counts[e]))[:4]
        assert kept[block] == sorted(top)
    assert pruned.config.moe_num_experts == 4
    # layer by layer, on the original model's hidden states: tokens whose two experts both
    # survive get exactly the same output; the rest are rerouted
    hidden = {}
    hooks = [b.ln_2.register_forward_hook(lambda m, i, o, b=b: hidden.__setitem__(b, o))
             for b in model.transformer.h]
    model(ids)
    for h in hooks:
        h.remove()
    for (block, full), (_, small) in zip(model.moe_blocks(), pruned.moe_blocks(), strict=True):
        x = hidden[model.transformer.h[block]].reshape(-1, 32)
        a, b = full.forward_with_stats(x), small.forward_with_stats(x)
        survives = torch.isin(a.routing.expert, torch.tensor(kept[block])).all(dim=1)
        assert survives.any()
        torch.testing.assert_close(b.out[survives], a.out[survives], atol=1e-5, rtol=1e-5)
        renamed = torch.tensor(kept[block])[b.routing.expert[survives]]
        assert torch.equal(renamed, a.routing.expert[survives])


def test_keeping_every_expert_reproduces_the_model_and_keeping_fewer_does_not():
    model = _model()
    ids = torch.randint(0, 64, (4, 16))
    usage = expert_usage(model, [ids])
    same, kept = prune_experts(model, 6, usage)
    assert kept == {0: list(range(6)), 1: list(range(6))}
    assert torch.equal(same(ids)[0], model(ids)[0])
    fewer, _ = prune_experts(model, 2, usage)
    assert (fewer(ids)[0] - model(ids)[0]).abs().max().item() > 1e-4


def test_pruning_refuses_keep_below_top_k():
    model = _model()
    with pytest.raises(ModelConfigError, match=r"keep \(1\) must be .* moe_top_k \(2\)"):
        prune_experts(model, 1, expert_usage(model, [torch.randint(0, 64, (1, 8))]))


def test_prune_command_writes_a_smaller_checkpoint(tmp_path, capsys):
    data = patterned_corpus(tmp_path / "data")
    _model().save_pretrained(tmp_path / "moe")
    code = tandem(["prune-experts", "--model", str(tmp_path / "moe"), "--data", str(data),
                   "--out", str(tmp_path / "small"), "--keep", "3", "--batches", "2"])
    assert code == 0
    assert '"kept"' in capsys.readouterr().out
    small = models.load_model(tmp_path / "small")
    assert [m.num_experts for _, m in small.moe_blocks()] == [3, 3]
