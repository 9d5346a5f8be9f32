"""The models' `kernels=` option and the dropless MoE mode.

Under Triton's CPU interpreter (tests/conftest.py sets it without CUDA), kernels="triton" runs
every fused kernel of the model (FlashAttention, LayerNorm, bias + GELU, the fused LM-head loss,
and for dropless MoE permute / grouped_gemm / unpermute); its logits, loss and gradients must
agree with the torch path within FP32 tolerances. The default path must not touch gpu_kernels.
"""

from __future__ import annotations

import json

import pytest
import torch

import models.gpt2 as gpt2_mod
import models.moe.layer as layer_mod
from gpu_kernels import triton_available
from models import GPT2Config, GPT2LMHead
from models.gpt2 import MLP
from models.moe import MoE
from models.moe.moe_gpt import MoEGPT, MoEGPTConfig

interpreter_only = pytest.mark.skipif(
    not triton_available("cpu"),
    reason="needs Triton's CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py "
           "without CUDA)")

#: |triton - torch| bounds in FP32 (logits and loss; gradients relative to their scale)
LOGIT_TOL, GRAD_RTOL = 2e-5, 1e-4

TINY = {"vocab_size": 64, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 2}


def _tiny_moe_config(**extra) -> MoEGPTConfig:
    return MoEGPTConfig(**TINY, moe_every=2, moe_num_experts=4, moe_top_k=2, **extra)


def _compare_paths(make_model, kernels="triton"):
    """Run the torch and the fused path on one set of weights; return the max differences."""
    torch.manual_seed(0)
    ref = make_model()
    fused = make_model()
    fused.load_state_dict(ref.state_dict())
    fused.set_kernels(kernels)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 29), generator=g)  # 29: ragged for the 32-wide tiles
    targets = torch.randint(0, 64, (2, 29), generator=g)
    targets[0, :3] = -100
    out = {}
    for name, model in (("torch", ref), ("fused", fused)):
        model.train(False)
        logits, _ = model(ids)
        loss = model.lm_loss(ids, targets)
        loss.backward()
        out[name] = (logits.detach(), loss.detach(),
                     {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (l0, s0, g0), (l1, s1, g1) = out["torch"], out["fused"]
    assert g0.keys() == g1.keys()
    grad_err = max(((g1[n] - g0[n]).abs().max() / g0[n].abs().max().clamp(min=1e-12)).item()
                   for n in g0)
    return (l1 - l0).abs().max().item(), (s1 - s0).abs().item(), grad_err


@interpreter_only
def test_gpt2_triton_path_matches_torch(monkeypatch):
    calls = []
    for name in ("flash_attention", "layer_norm", "bias_gelu", "cross_entropy"):
        real = getattr(gpt2_mod, name)
        monkeypatch.setattr(gpt2_mod, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name) or
                            _real(*a, **k))
    logit_err, loss_err, grad_err = _compare_paths(lambda: GPT2LMHead(GPT2Config(**TINY)))
    assert set(calls) == {"flash_attention", "layer_norm", "bias_gelu", "cross_entropy"}
    assert logit_err <= LOGIT_TOL
    assert loss_err <= LOGIT_TOL
    assert grad_err <= GRAD_RTOL


@interpreter_only
def test_gpt2_triton_path_with_kv_cache():
    """Prompt chunk after a KV cache (flash attention's past_len) equals the whole sequence."""
    torch.manual_seed(0)
    model = GPT2LMHead(GPT2Config(**TINY), kernels="triton").eval()
    ids = torch.randint(0, 64, (1, 27))
    with torch.no_grad():
        whole, _ = model(ids)
        _, past = model(ids[:, :19])
        tail, _ = model(ids[:, 19:], past)
    assert (tail - whole[:, 19:]).abs().max().item() <= LOGIT_TOL


@interpreter_only
def test_moe_gpt_triton_dropless_matches_torch():
    logit_err, loss_err, grad_err = _compare_paths(
        lambda: MoEGPT(_tiny_moe_config(moe_dropless=True)))
    assert logit_err <= LOGIT_TOL
    assert loss_err <= LOGIT_TOL
    assert grad_err <= GRAD_RTOL


def test_default_path_does_not_touch_gpu_kernels(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the torch path called a gpu_kernels function")

    for name in ("flash_attention", "layer_norm", "bias_gelu", "cross_entropy"):
        monkeypatch.setattr(gpt2_mod, name, fail)
    for kernels in ("torch", "auto"):  # auto is torch on the CPU
        model = GPT2LMHead(GPT2Config(**TINY), kernels=kernels)
        ids = torch.randint(0, 64, (1, 9))
        model.lm_loss(ids, ids).backward()
        model(ids)


def test_kernels_option_is_validated_and_not_saved(tmp_path):
    with pytest.raises(ValueError, match="kernels must be one of"):
        GPT2LMHead(GPT2Config(**TINY), kernels="cuda")
    model = MoEGPT(_tiny_moe_config(), kernels="triton")
    assert model.transformer.h[1].mlp.kernels == "triton"
    model.save_pretrained(tmp_path)
    assert "kernels" not in json.loads((tmp_path / "config.json").read_text())
    assert MoEGPT.from_pretrained(tmp_path).kernels == "torch"


# -- the dropless MoE layer -------------------------------------------------------------------


def _loop_reference(moe: MoE, x: torch.Tensor, routing) -> torch.Tensor:
    """sum_k weight[s, k] * expert_e(x[s]) over kept choices, one token at a time."""
    out = torch.zeros_like(x)
    for s in range(x.shape[0]):
        for k in range(routing.expert.shape[1]):
            if routing.kept[s, k]:
                e = int(routing.expert[s, k])
                out[s] += routing.weight[s, k] * moe.experts[e](x[s:s + 1])[0]
    return out


@pytest.mark.parametrize("kernels", ["torch", pytest.param("triton", marks=interpreter_only)])
@pytest.mark.parametrize("k", [1, 2])
def test_dropless_layer_equals_expert_loop(kernels, k):
    torch.manual_seed(0)
    config = GPT2Config(**TINY)
    moe = MoE(32, MLP(config), num_experts=5, k=k, dropless=True, kernels=kernels)
    for expert in moe.experts:  # distinct experts
        for p in expert.parameters():
            torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(37, 32, requires_grad=True)
    r = moe.forward_with_stats(x)
    assert r.routing.kept.all()  # dropless: nothing dropped even with capacity factor 1
    want = _loop_reference(moe, x, r.routing)
    assert (r.out - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kernels", ["torch", pytest.param("triton", marks=interpreter_only)])
def test_dropless_layer_equals_buffer_without_dropping(monkeypatch, kernels):
    """Same weights: dropless (grouped) and the capacity buffer with drop_tokens=False give the
    same outputs and gradients (input, experts and router)."""
    torch.manual_seed(0)
    config = GPT2Config(**TINY)
    grouped = MoE(32, MLP(config), num_experts=4, k=2, dropless=True, kernels=kernels)
    buffered = MoE(32, MLP(config), num_experts=4, k=2, drop_tokens=False)
    buffered.load_state_dict(grouped.state_dict())
    if kernels == "triton":  # the fused kernels must run, not their references
        monkeypatch.setattr(layer_mod, "grouped_gemm_reference", None)
    x = torch.randn(2, 19, 32)
    results = []
    for moe in (grouped, buffered):
        torch.manual_seed(5)  # top-2 training samples its second expert: route both alike
        xi = x.clone().requires_grad_(True)
        out = moe(xi)[0]
        out.square().sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in moe.named_parameters()}))
    (o0, x0, g0), (o1, x1, g1) = results
    assert (o0 - o1).abs().max().item() <= 1e-5
    assert (x0 - x1).abs().max().item() <= 1e-4
    for name in g1:
        assert (g0[name] - g1[name]).abs().max().item() <= 1e-4, name


def test_dropless_options_are_checked():
    from models.errors import ModelConfigError

    with pytest.raises(ModelConfigError, match="dropless MoE needs GPT-2 MLP experts"):
        MoE(8, torch.nn.Linear(8, 8), num_experts=2, dropless=True)
    with pytest.raises(ModelConfigError, match="dropless MoE runs on one expert-parallel rank"):
        MoE(32, MLP(GPT2Config(**TINY)), num_experts=2, ep_size=2, dropless=True)


def test_dropless_config_round_trips(tmp_path):
    from models.errors import ModelConfigError

    with pytest.raises(ModelConfigError, match="moe_dropless must be true or false, not 'yes'"):
        _tiny_moe_config(moe_dropless="yes")
    model = MoEGPT(_tiny_moe_config(moe_dropless=True))
    assert all(moe.dropless for _, moe in model.moe_blocks())
    model.save_pretrained(tmp_path)
    loaded = MoEGPT.from_pretrained(tmp_path)
    assert all(moe.dropless for _, moe in loaded.moe_blocks())
    assert not any(moe.dropless for _, moe in MoEGPT(_tiny_moe_config()).moe_blocks())


@pytest.mark.gpu
@pytest.mark.parametrize("moe", [False, True])
def test_triton_path_matches_torch_on_cuda(moe):
    """A 4 x 256 model (head_dim 64) in FP16 on CUDA: logits, loss and gradients of the Triton
    path against the torch path, with FP16 tolerances."""
    shape = {"vocab_size": 4096, "n_positions": 512, "n_embd": 256, "n_layer": 4, "n_head": 4}
    torch.manual_seed(0)
    if moe:
        # every token to every expert: fp16 noise cannot flip a routing decision
        config = MoEGPTConfig(**shape, moe_every=2, moe_num_experts=4, moe_top_k=4,
                              moe_dropless=True)
        ref = MoEGPT(config)
    else:
        ref = GPT2LMHead(GPT2Config(**shape))
    ref = ref.cuda().half().eval()
    fused = type(ref)(ref.config).cuda().half().eval()
    fused.load_state_dict(ref.state_dict())
    fused.set_kernels("auto")  # auto: Triton on CUDA
    ids = torch.randint(0, 4096, (4, 500), device="cuda")
    results = []
    for model in (ref, fused):
        logits, _ = model(ids)
        loss = model.lm_loss(ids, ids.roll(-1, dims=1))
        loss.backward()
        results.append((logits.float(), loss.float(),
                        {n: p.grad.float() for n, p in model.named_parameters()
                         if p.grad is not None}))
    (l0, s0, g0), (l1, s1, g1) = results
    assert (l1 - l0).abs().max().item() <= 2e-2 * l0.abs().max().item()
    assert abs(s1.item() - s0.item()) <= 2e-3 * s0.item()
    for name in g0:
        scale = g0[name].abs().max().clamp(min=1e-6)
        assert ((g1[name] - g0[name]).abs().max() / scale).item() <= 5e-2, name
