"""random-LTD: the kept-count schedule (hand-computed, and DeepSpeed's when installed), exact
equality with the plain model when every token is kept, dropped tokens bypassing their layer,
causal attention on the kept subset, for GPT-2 and MoE-GPT."""

from __future__ import annotations

import logging

import pytest
import torch

from models.errors import ModelConfigError
from models.gpt2 import GPT2LMHead
from models.moe.moe_gpt import MoEGPT, MoEGPTConfig
from models.random_ltd import RandomLTD, RandomLTDSchedule, attach, detach, subset_forward
from models.testing import tiny_config


def test_schedule_hand_computed():
    s = RandomLTDSchedule(min_value=32, max_value=128, require_steps=100, seq_per_step=16)
    # m = floor(32 + 96 * step / 100), rounded down to a multiple of 16, capped at 128:
    # 10 -> 41 -> 32; 20 -> 51 -> 48; 50 -> 80; 99 -> 127 -> 112; 200 -> 224 -> 128
    steps = [0, 10, 20, 50, 99, 100, 200]
    assert [s.value(k) for k in steps] == [32, 32, 48, 80, 112, 128, 128]
    assert [s.update(k) for k in (50, 20, 100, 0)] == [80, 48, 128, 128]  # frozen at max


def test_schedule_errors():
    with pytest.raises(ModelConfigError, match=r"min_value \(64\) must not exceed"):
        RandomLTDSchedule(64, 32, 10)
    with pytest.raises(ModelConfigError, match="at least seq_per_step"):
        RandomLTDSchedule(8, 32, 10, 16)
    with pytest.raises(ModelConfigError, match="require_steps must be a positive integer"):
        RandomLTDSchedule(8, 32, 0)
    with pytest.raises(ModelConfigError, match="2 layers have none"):
        RandomLTD(RandomLTDSchedule(8, 32, 10), n_layer=2)  # no middle layer
    with pytest.raises(ModelConfigError, match="layer 5 does not exist"):
        RandomLTD(RandomLTDSchedule(8, 32, 10), n_layer=4, layers=[5])


def test_schedule_matches_deepspeed():
    ds = pytest.importorskip("deepspeed.runtime.data_pipeline.data_routing.scheduler")
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    compared = 0
    for lo, hi, req, per in [(32, 128, 100, 16), (128, 2048, 200_000, 16), (1, 7, 3, 1),
                             (48, 50, 17, 3), (16, 16, 5, 16), (100, 1000, 999, 7)]:
        theirs = ds.RandomLTDScheduler({
            "total_layer_num": 4, "random_ltd_layer_num": 2, "global_batch_size": 1,
            "layer_token_lr_schedule": {"enabled": False},
            "random_ltd_schedule": {"min_value": lo, "max_value": hi,
                                    "schedule_type": "fixed_linear",
                                    "schedule_config": {"require_steps": req,
                                                        "seq_per_step": per}}})
        ours = RandomLTDSchedule(lo, hi, req, per)
        for step in sorted({0, 1, 2, req // 3, req // 2, req - 1, req, req + 1, 2 * req}):
            assert ours.value(step) == theirs.get_value(step), (lo, hi, req, per, step)
            theirs.update_seq(step)
            assert ours.update(step) == theirs.get_current_seq()
            compared += 1
    assert compared >= 40


def test_subset_forward_with_every_token_is_the_layer_itself():
    torch.manual_seed(0)
    block = GPT2LMHead(tiny_config(n_layer=1)).transformer.h[0]
    x = torch.randn(3, 10, 32)  # (B, T, C)
    keep = torch.arange(10).expand(3, 10)
    y, _kv = subset_forward(x, keep, lambda h: block(h, None))
    assert torch.equal(y, block(x, None)[0])  # bit-identical


def test_keeping_every_token_equals_the_plain_model_exactly():
    torch.manual_seed(0)
    model = GPT2LMHead(tiny_config(n_layer=4)).train()
    ids = torch.randint(0, 64, (2, 16))
    plain = model(ids)[0]
    ltd = RandomLTD(RandomLTDSchedule(16, 16, 10), n_layer=4, seed=3)
    attach(model, ltd)
    ltd.begin_step(0)
    assert ltd.kept == 16
    assert torch.equal(model(ids)[0], plain)
    detach(model)


class Recorder(RandomLTD):
    """RandomLTD that keeps, per layer, its input, output and kept indices."""

    def __call__(self, layer, x, run):
        self.log = getattr(self, "log", {})
        drawn = []
        keep_indices = self.keep_indices

        def spy(B, T, device):
            drawn.append(keep_indices(B, T, device))
            return drawn[-1]

        self.keep_indices = spy
        out = super().__call__(layer, x, run)
        del self.keep_indices
        self.log[layer] = (x.detach().clone(), out[0].detach().clone(),
                           drawn[0] if drawn else None)
        return out


def _check_dropping(model, n_layer, T=16, kept=6):
    ids = torch.randint(0, 64, (3, T))
    ltd = Recorder(RandomLTDSchedule(kept, T, 1000), n_layer=n_layer, seed=5)
    attach(model, ltd)
    ltd.begin_step(0)
    model.train()
    logits = model(ids)[0]
    logits.sum().backward()  # gradients flow through gather / scatter
    assert set(ltd.log) == set(range(n_layer))
    for layer, (x_in, x_out, keep) in ltd.log.items():
        if layer in (0, n_layer - 1):
            assert keep is None  # first and last layers see every token
            continue
        assert keep.shape == (3, kept)
        for b in range(3):
            k = keep[b]
            assert torch.all(k[1:] > k[:-1])  # ascending: original order
            dropped = torch.ones(T, dtype=torch.bool)
            dropped[k] = False
            # a dropped token leaves the layer exactly as it entered
            assert torch.equal(x_out[b, dropped], x_in[b, dropped])
            assert not torch.allclose(x_out[b, k], x_in[b, k])
            # the kept tokens are the layer applied to the kept subsequence alone, under its
            # causal mask: each sees the kept tokens at or before its original position
            block = model.transformer.h[layer]
            with torch.no_grad():
                alone = block(x_in[b, k][None], None)[0][0]
            assert torch.allclose(x_out[b, k], alone, atol=1e-5)
    # the subsets differ between layers and between sequences
    keeps = [ltd.log[i][2] for i in range(1, n_layer - 1)]
    assert not torch.equal(keeps[0][0], keeps[0][1])
    if len(keeps) > 1:
        assert not torch.equal(keeps[0], keeps[1])
    # eval mode never drops
    model.eval()
    with torch.no_grad():
        dropped_eval = model(ids)[0]
        detach(model)
        assert torch.equal(model(ids)[0], dropped_eval)


def test_gpt2_dropped_tokens_bypass_the_layer():
    torch.manual_seed(0)
    _check_dropping(GPT2LMHead(tiny_config(n_layer=4)), 4)


def _moe(**kw):
    moe = {"moe_every": 2, "moe_num_experts": 4, "moe_top_k": 2, "moe_capacity_factor": 4.0}
    return MoEGPT(MoEGPTConfig.from_dense(tiny_config(n_layer=4), **{**moe, **kw}))


def test_moe_gpt_dropped_tokens_bypass_the_layer():
    torch.manual_seed(0)
    # routing without sampling or capacity drops, so a token's expert mix does not depend on
    # the other tokens and the kept subsequence can be recomputed alone
    model = _moe(moe_top2_2nd_expert_sampling=False, moe_drop_tokens=False)
    model.begin_train_step(0, 1)
    _check_dropping(model, 4)
    assert len(model.last_aux.l_aux) == 2  # both MoE blocks reported, one on a subset


def test_moe_gpt_keeping_every_token_equals_the_plain_model_exactly():
    torch.manual_seed(0)
    model = _moe(moe_capacity_factor=1.0).train()
    ids = torch.randint(0, 64, (2, 16))
    model.begin_train_step(3, 1)
    plain = model(ids)[0]
    ltd = RandomLTD(RandomLTDSchedule(16, 16, 10), n_layer=4, seed=3)
    attach(model, ltd)
    ltd.begin_step(3)
    model.begin_train_step(3, 1)
    assert torch.equal(model(ids)[0], plain)
    # and through the gather / scatter path with every index kept
    block = model.transformer.h[1]
    x = torch.randn(2, 16, 32)
    keep = torch.arange(16).expand(2, 16)
    model.begin_train_step(4, 1)
    g = model._generator(x.device)
    whole = block(x, None, g)[0]
    model.begin_train_step(4, 1)
    g = model._generator(x.device)
    assert torch.equal(subset_forward(x, keep, lambda h: block(h, None, g))[0], whole)


def test_draws_are_a_function_of_seed_and_step():
    ltd = RandomLTD(RandomLTDSchedule(4, 16, 100), n_layer=4, seed=9)
    ltd.begin_step(7)
    a = ltd.keep_indices(2, 16, torch.device("cpu"))
    ltd.begin_step(7)
    assert torch.equal(ltd.keep_indices(2, 16, torch.device("cpu")), a)
    ltd.begin_step(8)
    assert not torch.equal(ltd.keep_indices(2, 16, torch.device("cpu")), a)
