"""The fused LM-head cross-entropy against F.cross_entropy on full FP32 logits: loss and both
gradients, a vocabulary in ragged chunks, ignored rows, FP32 and FP16; bad input; on CUDA the
full GPT-2 vocabulary with its peak memory."""

from __future__ import annotations

import pytest
import torch

import gpu_kernels.lm_loss as ce_mod
from gpu_kernels import cross_entropy

from .kernel_helpers import assert_close, forbid_reference, fp32_leaves, interpreter_only, leaf

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


def _check(hidden, weight, targets, dtype, oracle, chunk_size):
    h, w = leaf(hidden), leaf(weight)
    loss = cross_entropy(h, w, targets, chunk_size=chunk_size)
    loss.backward()
    rh, rw = fp32_leaves(h, w)
    ref = oracle(rh, rw, targets)
    ref.backward()
    loss_tol, grad_tol = TOL[dtype]
    assert loss.dtype == torch.float32
    assert_close("loss", loss, ref, loss_tol, loss_tol)
    assert h.grad.dtype == dtype
    assert w.grad.dtype == dtype
    # gradients are O(1 / N): compare relative to their own scale
    assert_close("dhidden", h.grad, rh.grad, 0.0, grad_tol * 10)
    assert_close("dweight", w.grad, rw.grad, 0.0, grad_tol * 10)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_full_logits_under_interpreter(monkeypatch, dtype):
    oracle = forbid_reference(monkeypatch, ce_mod, "cross_entropy_reference")
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 32, generator=g).to(dtype)
    weight = (0.5 * torch.randn(300, 32, generator=g)).to(dtype)  # 3 chunks of 128, last 44
    targets = torch.randint(0, 300, (37,), generator=g)
    targets[[3, 17]] = -100  # ignored rows
    targets[[10, 11, 12]] = torch.tensor([299, 0, 128])  # chunk edges
    _check(hidden, weight, targets, dtype, oracle, chunk_size=128)


@interpreter_only
def test_ignored_rows_get_no_gradient(monkeypatch):
    forbid_reference(monkeypatch, ce_mod, "cross_entropy_reference")
    hidden = torch.randn(6, 16, requires_grad=True)
    targets = torch.tensor([1, -100, 2, 3, -100, 4])
    cross_entropy(hidden, torch.randn(40, 16), targets, chunk_size=16).backward()
    assert hidden.grad[[1, 4]].abs().max() == 0
    assert hidden.grad[[0, 2, 3, 5]].abs().min() > 0


def test_bad_inputs():
    h, w = torch.randn(4, 8), torch.randn(10, 8)
    t = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"targets\[2\] = 10 is outside the vocabulary "
                                         r"\(0..9\) and is not ignore_index \(-100\)"):
        cross_entropy(h, w, torch.tensor([0, 1, 10, 3]))
    with pytest.raises(TypeError, match="targets must be int64, not int32"):
        cross_entropy(h, w, t.int())
    with pytest.raises(TypeError, match="hidden and weight must share one dtype"):
        cross_entropy(h, w.half(), t)
    with pytest.raises(ValueError, match="C differs"):
        cross_entropy(h, torch.randn(10, 7), t)
    with pytest.raises(ValueError, match="targets has 3 entries but hidden has 4 rows"):
        cross_entropy(h, w, t[:3])
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, not 0"):
        cross_entropy(h, w, t, chunk_size=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpt2_vocabulary_on_cuda(monkeypatch, dtype):
    """N = 8192 tokens, V = 50257, C = 768: matches, and peaks at under a quarter of the
    memory F.cross_entropy on full logits needs."""
    oracle = forbid_reference(monkeypatch, ce_mod, "cross_entropy_reference")
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(8192, 768, device="cuda", generator=g).to(dtype)
    weight = (0.05 * torch.randn(50257, 768, device="cuda", generator=g)).to(dtype)
    targets = torch.randint(0, 50257, (8192,), device="cuda", generator=g)

    def peak(fn):
        h, w = leaf(hidden), leaf(weight)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(h, w, targets).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    fused = peak(lambda h, w, t: cross_entropy(h, w, t))
    full = peak(oracle)
    assert fused * 4 <= full, f"fused peak {fused / 2**20:.0f} MiB, full {full / 2**20:.0f} MiB"
    _check(hidden[:2048], weight, targets[:2048], dtype, oracle, chunk_size=None)
