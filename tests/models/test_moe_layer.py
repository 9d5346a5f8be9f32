"""The MoE layer: index dispatch equals GShard's einsums, residual MoE, routing modes,
configuration errors, and the router staying fp32."""

from __future__ import annotations

import pytest
import torch

from models.errors import ModelConfigError
from models.gpt2 import MLP
from models.moe import MoE, routing_tensors
from models.testing import tiny_config

M = 32


def _layer(**kw) -> MoE:
    torch.manual_seed(0)
    layer = MoE(M, MLP(tiny_config(n_embd=M)), **{"num_experts": 4, **kw})
    for e in layer.experts:  # distinct experts, so a wrong dispatch shows in the output
        for p in e.parameters():
            torch.nn.init.normal_(p, std=0.2)
    return layer


def _einsum_reference(layer: MoE, x, routing):
    """GShard's formulation on the dense (S, E, C) tensors of the same routing."""
    combine, dispatch = routing_tensors(routing)
    dispatched = torch.einsum("sec,sm->ecm", dispatch.to(x.dtype), x)  # (E, C, M)
    y = torch.stack([expert(dispatched[e]) for e, expert in enumerate(layer.experts)])
    return torch.einsum("sec,ecm->sm", combine.to(x.dtype), y)


@pytest.mark.parametrize(
    "options",
    [
        {"k": 1, "use_rts": False},
        {"k": 1, "capacity_factor": 0.5, "use_rts": False},
        {"k": 2, "capacity_factor": 0.75},
        {"k": 3, "drop_policy": "position"},
        {"k": 2, "drop_tokens": False},
    ],
)
def test_index_dispatch_equals_the_einsum_formulation(options):
    layer = _layer(**options).train()
    x = torch.randn(2, 12, M)
    generator = torch.Generator().manual_seed(0)
    result = layer.forward_with_stats(x, generator=generator)
    want = _einsum_reference(layer, x.reshape(-1, M), result.routing)
    torch.testing.assert_close(result.out.reshape(-1, M), want, atol=1e-5, rtol=1e-5)
    # and the gradients of both paths agree, router included
    grads = torch.autograd.grad(result.out.square().sum(), list(layer.parameters()),
                                retain_graph=True)
    ref_grads = torch.autograd.grad(want.square().sum(), list(layer.parameters()),
                                    allow_unused=True)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r if r is not None else torch.zeros_like(g),
                                   atol=1e-5, rtol=1e-4)


def test_forward_returns_deepspeeds_triple():
    layer = _layer(k=2).eval()
    out, l_aux, counts = layer(torch.randn(3, 5, M))
    assert out.shape == (3, 5, M)
    assert l_aux.dim() == 0
    assert l_aux.item() > 0
    assert counts.shape == (4,)
    assert counts.sum().item() == 2 * 15


def test_dropped_tokens_get_zero_output_and_others_do_not():
    layer = _layer(k=1, capacity_factor=0.25, use_rts=False).train()
    x = torch.randn(16, M)
    r = layer.forward_with_stats(x)
    dropped = ~r.routing.kept[:, 0]
    assert dropped.any()
    assert (~dropped).any()
    assert r.out[dropped].abs().max().item() == 0
    assert r.out[~dropped].abs().min(dim=1).values.max().item() > 0


def test_eval_uses_eval_capacity_and_dropping_options():
    x = torch.randn(32, M)
    layer = _layer(k=1, capacity_factor=0.25, eval_capacity_factor=4.0, use_rts=False,
                   min_capacity=0)
    assert layer.train().forward_with_stats(x).routing.capacity == 2
    assert layer.eval().forward_with_stats(x).routing.capacity == 32
    nodrop = _layer(k=1, capacity_factor=0.25, eval_drop_tokens=False, use_rts=False).eval()
    assert nodrop.forward_with_stats(x).routing.kept.all()


def test_residual_moe_mixes_moe_and_dense_with_a_learned_coefficient():
    layer = _layer(k=1, use_residual=True, use_rts=False, eval_drop_tokens=False).eval()
    x = torch.randn(10, M)
    r = layer.forward_with_stats(x)
    coef = torch.softmax(layer.coefficient(x), dim=-1)
    plain = _einsum_reference(layer, x, r.routing)
    want = plain * coef[:, :1] + layer.residual_mlp(x) * coef[:, 1:]
    torch.testing.assert_close(r.out, want, atol=1e-5, rtol=1e-5)
    r.out.sum().backward()
    assert layer.coefficient.weight.grad.abs().sum() > 0


def test_router_is_fp32_for_half_precision_activations():
    layer = _layer(k=2).to(torch.bfloat16).eval()
    x = torch.randn(8, M).to(torch.bfloat16)
    logits = layer.gate.logits(x)
    assert logits.dtype == torch.float32
    expected = x.float() @ layer.gate.weight.float()
    torch.testing.assert_close(logits, expected)
    assert layer(x)[0].dtype == torch.bfloat16


def test_experts_are_independent_copies():
    layer = _layer()
    w0 = layer.experts[0].c_fc.weight
    assert w0.data_ptr() != layer.experts[1].c_fc.weight.data_ptr()
    assert len(layer.experts) == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_experts": 6, "ep_size": 4},
         r"^num_experts \(6\) must be divisible by ep_size \(4\)$"),
        ({"num_experts": 2, "k": 3}, r"^k \(3\) must not exceed num_experts \(2\); "),
        ({"capacity_factor": 0.0}, r"^capacity_factor must be > 0, not 0.0$"),
        ({"capacity_factor": -2.0}, r"^capacity_factor must be > 0, not -2.0$"),
        ({"eval_capacity_factor": 0.0}, r"^eval_capacity_factor must be > 0, not 0.0$"),
        ({"num_experts": 0}, r"^num_experts must be a positive integer, not 0$"),
        ({"noisy_gate_policy": "gauss"}, r"^noisy_gate_policy must be one of"),
    ],
)
def test_bad_layer_configs_get_clear_errors(options, message):
    with pytest.raises(ModelConfigError, match=message):
        MoE(M, MLP(tiny_config(n_embd=M)), **options)


def test_expert_parallel_layer_needs_its_group():
    layer = MoE(M, MLP(tiny_config(n_embd=M)), num_experts=4, ep_size=2)
    assert len(layer.experts) == 2
    with pytest.raises(ModelConfigError, match="needs an expert-parallel group"):
        layer(torch.randn(4, M))
