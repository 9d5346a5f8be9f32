"""layer_norm and bias_gelu against their FP32 torch references, forward and gradients, on
ragged rows (widths not powers of two), FP32 and FP16; bad input; a full-size CUDA variant."""

from __future__ import annotations

import pytest
import torch

import gpu_kernels.gelu as gelu_mod
import gpu_kernels.layernorm as ln_mod
from gpu_kernels import bias_gelu, layer_norm

from .kernel_helpers import assert_close, forbid_reference, fp32_leaves, interpreter_only, leaf

TOL = {torch.float32: (1e-5, 5e-5), torch.float16: (2e-3, 1e-2), torch.bfloat16: (1e-2, 5e-2)}


def _check_layer_norm(x, w, b, dtype, oracle):
    x, w, b = leaf(x), leaf(w), leaf(b)
    y = layer_norm(x, w, b, 1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    rx, rw, rb = fp32_leaves(x, w, b)
    ref = oracle(rx, rw, rb, 1e-5)
    ref.backward(grad.float())
    out_tol, grad_tol = TOL[dtype]
    assert y.dtype == dtype
    assert_close("y", y, ref, out_tol, out_tol)
    for name, got, want in (("dx", x.grad, rx.grad), ("dweight", w.grad, rw.grad),
                            ("dbias", b.grad, rb.grad)):
        assert_close(name, got, want, grad_tol, grad_tol)


def _check_bias_gelu(x, b, approximate, dtype, oracle):
    x = leaf(x)
    b = None if b is None else leaf(b)
    y = bias_gelu(x, b, approximate)
    grad = torch.randn_like(y)
    y.backward(grad)
    rx = fp32_leaves(x)[0]
    rb = None if b is None else fp32_leaves(b)[0]
    ref = oracle(rx, rb, approximate)
    ref.backward(grad.float())
    out_tol, grad_tol = TOL[dtype]
    assert_close("y", y, ref, out_tol, out_tol)
    assert_close("dx", x.grad, rx.grad, grad_tol, grad_tol)
    if b is not None:
        assert_close("dbias", b.grad, rb.grad, grad_tol, grad_tol)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(3, 37, 100), (5, 48)])
def test_layer_norm_matches_reference(monkeypatch, dtype, shape):
    oracle = forbid_reference(monkeypatch, ln_mod, "layer_norm_reference")
    g = torch.Generator().manual_seed(0)
    N = shape[-1]
    x = (torch.randn(shape, generator=g) * 3 + 1).to(dtype)
    w = (1 + 0.2 * torch.randn(N, generator=g)).to(dtype)
    b = (0.2 * torch.randn(N, generator=g)).to(dtype)
    _check_layer_norm(x, w, b, dtype, oracle)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_matches_reference(monkeypatch, dtype, approximate, with_bias):
    oracle = forbid_reference(monkeypatch, gelu_mod, "bias_gelu_reference")
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(7, 37, 96, generator=g) * 4).to(dtype)  # 24864 elements: ragged last block
    b = (torch.randn(96, generator=g)).to(dtype) if with_bias else None
    _check_bias_gelu(x, b, approximate, dtype, oracle)


@interpreter_only
def test_bias_gelu_saturates_without_overflow(monkeypatch):
    """|x| = 1e4: GELU is x or 0 and its slope 1 or 0; no inf/nan (and no overflow warning,
    which the suite turns into an error)."""
    forbid_reference(monkeypatch, gelu_mod, "bias_gelu_reference")
    x = torch.tensor([[-1e4, 1e4, -50.0, 50.0]], requires_grad=True)
    y = bias_gelu(x)
    y.sum().backward()
    assert y.detach().tolist() == [[0.0, 1e4, 0.0, 50.0]]
    assert x.grad.tolist() == [[0.0, 1.0, 0.0, 1.0]]


def test_bad_inputs():
    x = torch.randn(4, 8)
    w = torch.ones(8)
    with pytest.raises(ValueError, match=r"weight and bias must have shape \(8,\)"):
        layer_norm(x, torch.ones(7), torch.zeros(7))
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32, not int32"):
        layer_norm(x.int(), w, w)
    with pytest.raises(ValueError, match="x must be contiguous"):
        layer_norm(torch.randn(8, 4).t(), w, w)
    with pytest.raises(ValueError, match="eps must be a positive number, not 0"):
        layer_norm(x, w, w, eps=0)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\) to match"):
        bias_gelu(x, torch.ones(5))
    with pytest.raises(ValueError, match="approximate must be one of"):
        bias_gelu(x, None, "erf")
    with pytest.raises(TypeError, match=r"bias must be a torch\.Tensor, not list"):
        bias_gelu(x, [0.0] * 8)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_matches_reference_on_cuda(monkeypatch, dtype):
    ln_oracle = forbid_reference(monkeypatch, ln_mod, "layer_norm_reference")
    gelu_oracle = forbid_reference(monkeypatch, gelu_mod, "bias_gelu_reference")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 1023, 768, device="cuda", generator=g).to(dtype)
    w = (1 + 0.2 * torch.randn(768, device="cuda", generator=g)).to(dtype)
    b = (0.2 * torch.randn(768, device="cuda", generator=g)).to(dtype)
    _check_layer_norm(x, w, b, dtype, ln_oracle)
    h = torch.randn(8, 1023, 3072, device="cuda", generator=g).to(dtype)
    _check_bias_gelu(h, torch.randn(3072, device="cuda", generator=g).to(dtype), "tanh", dtype,
                     gelu_oracle)
