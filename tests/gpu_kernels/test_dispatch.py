"""Where the kernels run: the kernels-option resolver, the fallback notice, and every public
function's torch fallback where Triton cannot run (simulated by switching the interpreter off)."""

from __future__ import annotations

import pytest
import torch

import gpu_kernels
import gpu_kernels._dispatch as dispatch
from gpu_kernels import kernels_notice, resolve_kernels, triton_available


def test_resolver():
    assert resolve_kernels("torch", "cpu") == "torch"
    assert resolve_kernels("auto", "cpu") == "torch"  # auto: Triton on CUDA only
    assert resolve_kernels("triton", "cpu") == ("triton" if triton_available("cpu") else "torch")
    with pytest.raises(ValueError, match=r"kernels must be one of \('torch', 'triton', 'auto'\), "
                                         r"not 'cuda'"):
        resolve_kernels("cuda", "cpu")
    assert set(gpu_kernels.__all__) >= {"triton_available", "resolve_kernels", "kernels_notice",
                                        "flash_attention", "layer_norm", "bias_gelu",
                                        "cross_entropy", "permute", "unpermute", "grouped_gemm"}


def test_notice_when_triton_cannot_run(monkeypatch):
    monkeypatch.setattr(dispatch, "INTERPRETER", False)
    assert not triton_available("cpu")
    assert resolve_kernels("triton", "cpu") == "torch"
    notice = kernels_notice("triton", "cpu")
    assert notice is not None
    assert "\n" not in notice
    assert notice.startswith("--kernels triton: ")
    assert "using the torch reference kernels" in notice
    assert kernels_notice("torch", "cpu") is None
    assert kernels_notice("auto", "cpu") is None


def test_every_function_falls_back_to_its_reference(monkeypatch):
    """Without Triton (no CUDA, no interpreter) each public function returns exactly what its
    torch reference returns, differentiably."""
    monkeypatch.setattr(dispatch, "INTERPRETER", False)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 24, generator=g) for _ in range(3))  # head_dim 24 is fine
    assert torch.equal(gpu_kernels.flash_attention(q, k, v),
                       gpu_kernels.attention_reference(q, k, v))
    x = torch.randn(5, 12, generator=g, requires_grad=True)
    w, b = torch.ones(12), torch.zeros(12)
    assert torch.equal(gpu_kernels.layer_norm(x, w, b), gpu_kernels.layer_norm_reference(x, w, b))
    assert torch.equal(gpu_kernels.bias_gelu(x, b), gpu_kernels.bias_gelu_reference(x, b))
    t = torch.tensor([0, 3, -100, 7, 1])
    W = torch.randn(8, 12, generator=g)
    loss = gpu_kernels.cross_entropy(x, W, t)
    assert torch.equal(loss, gpu_kernels.cross_entropy_reference(x, W, t))
    loss.backward()
    assert x.grad is not None
    expert = torch.tensor([[1], [0], [1], [-1], [1]])
    xs, sizes, order = gpu_kernels.permute(x, expert, 3)
    assert sizes.tolist() == [1, 3, 0]
    y = gpu_kernels.grouped_gemm(xs, torch.randn(3, 12, 12, generator=g), sizes)
    out = gpu_kernels.unpermute(y, order, torch.ones(5, 1))
    assert out[3].abs().max() == 0  # the unrouted token gets nothing


def test_works_without_triton_installed():
    """triton is an optional extra: with it unimportable, gpu_kernels and the models import,
    report it, and compute through the torch references (a fresh interpreter, triton blocked)."""
    import os
    import subprocess
    import sys

    code = """
import sys
sys.modules["triton"] = None  # import triton now raises ImportError
import torch
import gpu_kernels
from models import GPT2Config, GPT2LMHead
assert not gpu_kernels.HAVE_TRITON and not gpu_kernels.triton_available("cpu")
print(gpu_kernels.kernels_notice("triton", "cpu"))
q = torch.randn(1, 2, 5, 16)
assert torch.equal(gpu_kernels.flash_attention(q, q, q), gpu_kernels.attention_reference(q, q, q))
model = GPT2LMHead(GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=1, n_head=1),
                   kernels="triton")
ids = torch.randint(0, 32, (1, 8))
model.lm_loss(ids, ids).backward()
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("--kernels triton: triton is not installed; using the torch "
                                   "reference kernels")
