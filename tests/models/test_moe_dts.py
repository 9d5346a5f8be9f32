"""DTS-Gate: the temperature schedule, dense-to-sparse routing, and top-k at inference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.errors import ModelConfigError
from models.moe import DTSGate, DTSSchedule, dts_gating


def test_temperature_decays_geometrically_then_holds():
    s = DTSSchedule(tau_start=2.0, tau_end=0.5, anneal_steps=100)
    assert s.temperature(0) == pytest.approx(2.0)
    assert s.temperature(50) == pytest.approx(1.0)  # sqrt(2.0 * 0.5)
    assert s.temperature(100) == pytest.approx(0.5)
    assert s.temperature(10_000) == pytest.approx(0.5)
    assert s.temperature(25) == pytest.approx(2.0 * 0.25 ** 0.25)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tau_start": 0.0}, "DTS temperatures must be > 0"),
        ({"anneal_steps": 0}, "anneal_steps must be a positive integer"),
        ({"threshold": 1.5}, r"threshold must be in \(0, 1\]"),
    ],
)
def test_bad_schedules_are_refused(options, message):
    with pytest.raises(ModelConfigError, match=message):
        DTSSchedule(**options)


def _mean_active(gate: DTSGate, x: torch.Tensor, step: int) -> float:
    gate.set_step(step)
    r = gate(x, generator=torch.Generator().manual_seed(step)).routing
    return r.kept.sum(dim=1).float().mean().item()


def test_routing_starts_dense_and_becomes_sparse():
    torch.manual_seed(0)
    E = 8
    gate = DTSGate(64, E, k=2, schedule=DTSSchedule(2.0, 0.1, 100, 0.25)).train()
    x = torch.randn(512, 64)
    active = [_mean_active(gate, x, step) for step in (0, 25, 50, 75, 100)]
    assert active[0] > 0.9 * E  # dense at the start
    assert all(a >= b for a, b in itertools.pairwise(active))  # monotone
    assert active[-1] < 1.5  # nearly top-1 at the end


def test_training_weights_are_renormalised_gumbel_softmax_over_the_active_set():
    torch.manual_seed(1)
    logits = torch.randn(64, 4)
    r = dts_gating(logits, 0.7, 0.25, generator=torch.Generator().manual_seed(5))
    g = torch.softmax((logits + _gumbel_like(logits, 5)) / 0.7, dim=1)
    active = g >= 0.25 / 4
    active[torch.arange(64), g.argmax(dim=1)] = True
    want = torch.where(active, g, torch.zeros_like(g))
    want = want / want.sum(dim=1, keepdim=True)
    got = torch.zeros(64, 4).scatter_add(1, r.expert, r.weight)
    torch.testing.assert_close(got, want)
    assert r.exp_counts.tolist() == active.sum(dim=0).tolist()
    assert r.capacity == active.sum(dim=0).max().item()  # dropless


def _gumbel_like(logits, seed):
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed))
    u = u.clamp(torch.finfo(torch.float32).tiny, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def test_inference_is_deterministic_top_k():
    torch.manual_seed(2)
    gate = DTSGate(16, 6, k=2).eval()
    x = torch.randn(40, 16)
    a, b = gate(x).routing, gate(x).routing
    assert torch.equal(a.expert, b.expert)
    assert torch.equal(a.weight, b.weight)
    logits = x @ gate.weight
    want = logits.topk(2).indices.sort(dim=1).values
    assert a.expert.sort(dim=1).values.tolist() == want.tolist()
    torch.testing.assert_close(a.weight.sum(dim=1), torch.ones(40))
    assert a.kept.all()


def test_balance_loss_is_one_for_uniform_dense_routing():
    logits = torch.zeros(64, 4)
    r = dts_gating(logits, 1e6, 0.25)  # huge temperature: every weight is 1/E
    assert r.kept.all()
    assert r.l_aux.item() == pytest.approx(1.0, abs=1e-5)
    assert math.isfinite(r.l_aux.item())
