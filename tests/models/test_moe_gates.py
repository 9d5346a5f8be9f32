"""Gating: capacity, dropping, Random Token Selection, noise, losses; against hand-computed
cases and a plain-loop reference of DeepSpeed's rules (tests/models/moe_helpers.py)."""

from __future__ import annotations

import math

import pytest
import torch

from models.errors import ModelConfigError
from models.moe import (
    capacity,
    load_balancing_loss,
    route,
    router_z_loss,
    top1gating,
    top2gating,
    topkgating,
)
from models.moe.gates import gumbel_noise, multiplicative_jitter

from .moe_helpers import logits_for, reference_gating

# -- capacity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "experts", "k", "factor", "floor", "expected"),
    [
        (8, 4, 1, 1.0, 0, 2),  # 8 / 4
        (10, 4, 1, 1.0, 0, 3),  # ceil(2.5)
        (10, 4, 1, 1.2, 0, 3),  # 1.2 * 10 / 4 = 3 exactly (float32 would say 4)
        (10, 4, 2, 1.0, 0, 5),  # k counts: ceil(2 * 10 / 4)
        (12, 8, 3, 1.25, 0, 6),  # ceil(3 * 1.25 * 12 / 8) = ceil(5.625)
        (4, 8, 1, 1.0, 4, 4),  # floor wins over ceil(0.5) = 1
        (1, 8, 2, 1.0, 0, 1),  # batch-1 decode
    ],
)
def test_capacity_follows_the_deepspeed_rule(tokens, experts, k, factor, floor, expected):
    assert capacity(tokens, experts, k, factor, floor) == expected


def test_gates_size_buffers_by_capacity():
    logits = torch.randn(10, 4)
    assert top1gating(logits, 1.0, 0, use_rts=False)[1].shape == (10, 4, 3)
    assert top2gating(logits, 1.0, 0)[1].shape == (10, 4, 5)
    assert topkgating(logits, 3, 1.0, 0)[1].shape == (10, 4, 8)
    assert top1gating(logits, 1.0, 7, use_rts=False)[1].shape == (10, 4, 7)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: topkgating(x, 5, 1.0, 0), r"k \(5\) must not exceed num_experts \(4\)"),
        (lambda x: top1gating(x, 0.0, 0), r"capacity_factor must be > 0, not 0.0"),
        (lambda x: top2gating(x, -1.0, 0), r"capacity_factor must be > 0, not -1.0"),
        (lambda x: topkgating(x, 2, 1.0, 0, drop_policy="random"), r"drop_policy must be"),
        (lambda x: top1gating(x, 1.0, 0, noisy_gate_policy="Gauss"), r"noisy_gate_policy"),
    ],
)
def test_bad_gate_options_are_refused_in_one_line(call, message):
    with pytest.raises(ModelConfigError, match=message) as info:
        call(torch.randn(6, 4))
    assert "\n" not in str(info.value)


# -- hand-computed cases ----------------------------------------------------------------------

# Three tokens prefer expert 0 (p = 0.8, 0.7, 0.9), one prefers expert 1 (p = 0.75).
HAND = [[0.8, 0.2], [0.7, 0.3], [0.9, 0.1], [0.25, 0.75]]


def test_top1_loss_and_combine_by_position_by_hand():
    l_aux, combine, dispatch, counts = top1gating(logits_for(HAND), 1.0, 0, use_rts=False)
    # me = (2.65/4, 1.35/4), ce = (3/4, 1/4): l_aux = 2 * (0.6625 * 0.75 + 0.3375 * 0.25)
    assert l_aux.item() == pytest.approx(2 * (0.6625 * 0.75 + 0.3375 * 0.25), abs=1e-6)
    assert counts.tolist() == [3, 1]  # demand, before dropping
    # C = ceil(4 / 2) = 2: expert 0 keeps tokens 0 and 1 (first come), token 2 is dropped
    expected = torch.zeros(4, 2, 2)
    expected[0, 0, 0], expected[1, 0, 1], expected[3, 1, 0] = 0.8, 0.7, 0.75
    torch.testing.assert_close(combine, expected)
    assert dispatch.tolist() == (expected > 0).tolist()


def test_top1_drops_by_probability_when_asked():
    _, combine, _, _ = top1gating(logits_for(HAND), 1.0, 0, use_rts=False, drop_policy="probs")
    kept = combine.sum(dim=(1, 2)) > 0
    assert kept.tolist() == [True, False, True, True]  # 0.7 is the least probable for expert 0
    assert combine[2, 0, 1].item() == pytest.approx(0.9)  # slots stay in token order


def test_top1_renormalised_weights_are_one_and_keep_the_router_gradient():
    logits = logits_for(HAND).requires_grad_()
    _, combine, _, _ = top1gating(logits, 1.0, 0, use_rts=False, renormalize=True)
    assert combine.sum(dim=(1, 2)).tolist() == [1.0, 1.0, 0.0, 1.0]
    combine.sum().backward()
    assert logits.grad.abs().sum() > 0


def test_top2_orders_first_choices_before_second_and_renormalises():
    # token 0 ranks experts 0 > 1 > 2, token 1 ranks 1 > 2 > 0
    probs = [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]
    l_aux, combine, _, counts = top2gating(logits_for(probs), 1.0, 0,
                                           top2_2nd_expert_sampling=False)
    assert counts.tolist() == [1, 2, 1]
    # l_aux counts first choices: me = (0.35, 0.4, 0.25), ce = (0.5, 0.5, 0)
    assert l_aux.item() == pytest.approx(3 * (0.35 * 0.5 + 0.4 * 0.5), abs=1e-6)
    assert combine.shape == (2, 3, 2)  # C = ceil(2 * 2 / 3)
    assert combine[1, 1, 0].item() == pytest.approx(0.5 / 0.8)  # token 1's first choice: slot 0
    assert combine[0, 1, 1].item() == pytest.approx(0.3 / 0.8)  # token 0's second: after it
    assert combine[0, 0, 0].item() == pytest.approx(0.5 / 0.8)
    assert combine[1, 2, 0].item() == pytest.approx(0.3 / 0.8)
    # capacity 1: token 0's second choice (expert 1) is dropped, its first takes weight 1
    _, combine, _, _ = top2gating(logits_for(probs), 0.5, 0, top2_2nd_expert_sampling=False)
    assert combine.shape == (2, 3, 1)
    assert combine[0].sum().item() == pytest.approx(1.0)
    assert combine[0, 0, 0].item() == pytest.approx(1.0)


def test_dropless_keeps_every_assignment():
    logits = torch.randn(32, 4) + torch.tensor([3.0, 0, 0, 0])  # most tokens want expert 0
    _, combine, dispatch, counts = top1gating(logits, 1.0, 0, drop_tokens=False, use_rts=False)
    assert combine.shape[2] == counts.max().item() > 8  # C is the largest load, not 32 / 4
    assert dispatch.sum().item() == 32
    _, combine, _, _ = top1gating(logits, 1.0, 0, drop_tokens=True, use_rts=False)
    assert (combine.sum(dim=(1, 2)) > 0).sum().item() < 32  # the capacity mode does drop


def test_used_token_masks_padding():
    logits = torch.randn(8, 4)
    used = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    _, combine, _, counts = top1gating(logits, 2.0, 0, used_token=used, use_rts=False)
    assert counts.sum().item() == 4
    assert combine[4:].abs().sum().item() == 0


def test_router_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_load_balancing_loss_is_one_when_uniform_and_e_when_collapsed():
    E = 4
    uniform = torch.full((8, E), 1 / E)
    spread = torch.eye(E).repeat(2, 1)
    assert load_balancing_loss(uniform, spread).item() == pytest.approx(1.0)
    collapsed = torch.zeros(8, E)
    collapsed[:, 0] = 1.0
    assert load_balancing_loss(collapsed, collapsed).item() == pytest.approx(E)


# -- against the plain-loop reference ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("k", "factor", "floor", "drop", "policy"),
    [
        (1, 1.0, 0, True, "position"),
        (1, 0.5, 2, True, "probs"),
        (2, 1.0, 0, True, "position"),
        (2, 0.75, 0, True, "probs"),
        (3, 1.0, 0, True, "probs"),
        (3, 0.6, 1, True, "position"),
        (2, 1.0, 0, False, "position"),
    ],
)
def test_gates_match_the_reference(seed, k, factor, floor, drop, policy):
    torch.manual_seed(seed)
    logits = torch.randn(24, 6) * 2
    if k == 1:
        got = top1gating(logits, factor, floor, drop_tokens=drop, use_rts=False,
                         drop_policy=policy)
        want = reference_gating(logits, 1, factor, floor, drop, policy, "choice", False, True)
    elif k == 2:
        got = top2gating(logits, factor, floor, drop_tokens=drop, drop_policy=policy,
                         top2_2nd_expert_sampling=False)
        want = reference_gating(logits, 2, factor, floor, drop, policy, "choice", True, True)
    else:
        got = topkgating(logits, k, factor, floor, drop_tokens=drop, drop_policy=policy)
        want = reference_gating(logits, k, factor, floor, drop, policy, "token", True, False)
    assert got[0].item() == pytest.approx(want[0], rel=1e-5)
    torch.testing.assert_close(got[1].double(), want[1], atol=1e-6, rtol=1e-5)
    assert got[2].tolist() == want[2].tolist()
    assert got[3].tolist() == want[3].tolist()


# -- randomness: RTS, noise -------------------------------------------------------------------


def _kept_tokens(seed: int | None, use_rts: bool = True) -> list[int]:
    logits = torch.zeros(64, 2)
    logits[:, 0] = 1.0  # every token wants expert 0; capacity keeps 8 of them
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    _, combine, _, _ = top1gating(logits, 0.25, 0, use_rts=use_rts, generator=gen)
    return (combine.sum(dim=(1, 2)) > 0).nonzero().flatten().tolist()


def test_random_token_selection_is_deterministic_under_a_seed():
    first = _kept_tokens(seed=7)
    assert len(first) == 8
    assert _kept_tokens(seed=7) == first
    assert _kept_tokens(seed=8) != first  # C(64, 8) choices: a repeat would be a bug
    assert first != list(range(8))  # random, not first come
    assert _kept_tokens(seed=None, use_rts=False) == list(range(8))


def test_rsample_noise_changes_top1_choices_but_not_the_weights():
    torch.manual_seed(0)
    logits = torch.randn(256, 4) * 0.1  # close calls: Gumbel noise flips many
    plain = route(logits, 1, 4.0, 0, priority="position")
    noisy = route(logits, 1, 4.0, 0, priority="position", rsample=True,
                  generator=torch.Generator().manual_seed(1))
    flipped = (plain.expert != noisy.expert).float().mean().item()
    assert 0.2 < flipped < 0.95
    probs = torch.softmax(logits, dim=1).gather(1, noisy.expert)
    torch.testing.assert_close(noisy.weight, probs)  # weights: clean probabilities


def test_top2_second_expert_sampling_draws_the_second_choice_only():
    torch.manual_seed(0)
    logits = torch.randn(256, 6)
    r = route(logits, 2, 8.0, 0, sample_after_first=True,
              generator=torch.Generator().manual_seed(3))
    assert r.expert[:, 0].tolist() == logits.argmax(dim=1).tolist()
    second_best = logits.topk(2, dim=1).indices[:, 1]
    assert (r.expert[:, 1] != second_best).float().mean().item() > 0.2


def test_noise_primitives_have_the_stated_laws():
    g = gumbel_noise((200_000,), "cpu", torch.Generator().manual_seed(0))
    assert g.mean().item() == pytest.approx(0.5772, abs=0.01)  # Euler-Mascheroni
    assert g.var().item() == pytest.approx(math.pi**2 / 6, rel=0.02)
    x = torch.ones(10_000)
    y = multiplicative_jitter(x, 0.01, torch.Generator().manual_seed(0))
    assert y.min().item() >= 0.99
    assert y.max().item() <= 1.01
    assert y.std().item() > 0.005


# -- no host synchronisation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "gate",
    [
        lambda x: top1gating(x, 1.0, 4, noisy_gate_policy="RSample"),
        lambda x: top2gating(x, 1.25, 4),
        lambda x: topkgating(x, 3, 1.0, 4),
        lambda x: topkgating(x, 3, 1.0, 4, drop_policy="position"),
    ],
)
def test_capacity_modes_never_read_the_device(gate):
    # A meta tensor has no data: any .item(), bool() or data-dependent shape raises.
    logits = torch.empty(64, 8, device="meta")
    _l_aux, combine, _dispatch, _counts = gate(logits)
    assert combine.device.type == "meta"
    assert combine.shape[:2] == (64, 8)


def test_dropless_mode_does_read_the_device():
    # the control for the test above: the one mode that needs a value on the host
    with pytest.raises((RuntimeError, NotImplementedError)):
        top1gating(torch.empty(64, 8, device="meta"), 1.0, 4, drop_tokens=False)
