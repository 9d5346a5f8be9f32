"""flash_attention against the FP32 torch reference: forward and gradients, ragged lengths
(not multiples of the 32-wide interpreter tiles), a KV-cache offset, FP32 and FP16; bad input;
and a full-size CUDA variant."""

from __future__ import annotations

import pytest
import torch

import gpu_kernels.attention as fa
from gpu_kernels import flash_attention

from .kernel_helpers import assert_close, forbid_reference, fp32_leaves, interpreter_only, leaf

# (tolerance on the output, on the gradients) against an FP32 reference on the same inputs
TOL = {torch.float32: (2e-5, 5e-5), torch.float16: (2e-3, 1e-2), torch.bfloat16: (2e-2, 6e-2)}


def _check(q, k, v, causal, past_len, dtype, oracle):
    q, k, v = (leaf(t) for t in (q, k, v))
    out = flash_attention(q, k, v, causal=causal, past_len=past_len)
    grad = torch.randn_like(out)
    out.backward(grad)
    rq, rk, rv = fp32_leaves(q, k, v)
    ref = oracle(rq, rk, rv, causal, past_len)
    ref.backward(grad.float())
    out_tol, grad_tol = TOL[dtype]
    assert out.dtype == dtype
    assert_close("out", out, ref, out_tol, out_tol)
    for name, got, want in (("dq", q.grad, rq.grad), ("dk", k.grad, rk.grad),
                            ("dv", v.grad, rv.grad)):
        assert got.dtype == dtype
        assert_close(name, got, want, grad_tol, grad_tol)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("Tq", "Tk", "past_len", "causal"), [
    (45, 45, 0, True),  # ragged: 2 tiles, the second 13 rows
    (13, 50, 37, True),  # a prompt chunk after 37 cached positions
    (20, 70, 0, True),  # keys longer than queries, no offset: the trailing keys are unseen
    (45, 33, 0, False),
])
def test_matches_reference_under_interpreter(monkeypatch, dtype, Tq, Tk, past_len, causal):
    oracle = forbid_reference(monkeypatch, fa, "attention_reference")
    g = torch.Generator().manual_seed(Tq * 100 + Tk)
    q = torch.randn(2, 3, Tq, 16, generator=g).to(dtype)
    k, v = (torch.randn(2, 3, Tk, 16, generator=g).to(dtype) for _ in range(2))
    _check(q, k, v, causal, past_len, dtype, oracle)


@interpreter_only
def test_unseen_keys_get_zero_gradient(monkeypatch):
    """Causal with Tk > past_len + Tq: keys past the last query's position get no gradient."""
    forbid_reference(monkeypatch, fa, "attention_reference")
    q, k, v = (torch.randn(1, 1, T, 16, requires_grad=True) for T in (8, 40, 40))
    flash_attention(q, k, v, past_len=4).sum().backward()
    assert k.grad[..., 12:, :].abs().max() == 0
    assert v.grad[..., 12:, :].abs().max() == 0
    assert k.grad[..., :12, :].abs().max() > 0


def test_bad_inputs():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(TypeError, match="q must be float16, bfloat16, float32, not int64"):
        flash_attention(q.long(), q, q)
    with pytest.raises(TypeError, match="share one dtype"):
        flash_attention(q, q.half(), q.half())
    with pytest.raises(ValueError, match="q must have 4 dimensions, not 3"):
        flash_attention(q[0], q, q)
    with pytest.raises(ValueError, match=r"past_len \(4\) \+ query length \(8\) exceeds the key "
                                         r"length \(8\)"):
        flash_attention(q, q, q, past_len=4)
    with pytest.raises(ValueError, match="does not match q"):
        flash_attention(q, torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16))
    kt = torch.randn(1, 2, 16, 8).transpose(-1, -2)
    with pytest.raises(ValueError, match="k must be contiguous in head_dim"):
        flash_attention(q, kt, kt)
    meta = torch.empty(1, 2, 8, 16, device="meta")
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        flash_attention(q, meta, meta)
    with pytest.raises(ValueError, match="past_len must be an integer >= 0, not -1"):
        flash_attention(q, q, q, past_len=-1)


@interpreter_only
def test_head_dim_not_power_of_two_is_refused_on_the_triton_path():
    q = torch.randn(1, 2, 8, 24)
    with pytest.raises(ValueError, match="head_dim must be a power of two from 16 to 256 for the "
                                         "Triton path, not 24"):
        flash_attention(q, q, q)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("Tq", "Tk", "past_len", "D"), [
    (1000, 1000, 0, 64), (1024, 1024, 0, 128), (257, 1300, 1043, 64)])
def test_matches_reference_on_cuda(monkeypatch, dtype, Tq, Tk, past_len, D):
    oracle = forbid_reference(monkeypatch, fa, "attention_reference")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 4, Tq, D, device="cuda", generator=g).to(dtype)
    k, v = (torch.randn(2, 4, Tk, D, device="cuda", generator=g).to(dtype) for _ in range(2))
    _check(q, k, v, True, past_len, dtype, oracle)
