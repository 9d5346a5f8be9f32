"""permute / unpermute and grouped_gemm against their torch references (a gather, an
index_add, a loop over experts): forward and gradients, group sizes that are not multiples of
the tile and an empty group, unrouted choices, FP32 and FP16; bad input; a CUDA variant."""

from __future__ import annotations

import pytest
import torch

import gpu_kernels.grouped_matmul as gmm_mod
import gpu_kernels.moe_dispatch as disp_mod
from gpu_kernels import grouped_gemm, permute, unpermute

from .kernel_helpers import assert_close, forbid_reference, fp32_leaves, interpreter_only, leaf

TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _routing(S, K, E, gen, device="cpu"):
    """(S, K) distinct experts per token, expert 3 never chosen, one choice not routed."""
    scores = torch.rand(S, E, generator=gen)
    scores[:, 3] = -1.0  # expert 3 is never among the top K
    expert = scores.topk(K, dim=1).indices
    expert[4, K - 1] = -1
    return expert.to(device)


def _moe_ffn(perm, unperm, gmm, x, expert, weight, w1, b1, w2, E):
    """permute -> grouped_gemm -> relu -> grouped_gemm -> unpermute."""
    xs, sizes, order = perm(x, expert, E)
    h = gmm(xs, w1, sizes, b1).relu()
    return unperm(gmm(h, w2, sizes, None), order, weight), sizes


def _check_pipeline(S, K, E, M, N, dtype, device, oracles):
    g = torch.Generator().manual_seed(S)
    expert = _routing(S, K, E, g, device)
    x = torch.randn(S, M, generator=g).to(device, dtype)
    weight = torch.rand(S, K, generator=g).to(device)
    w1 = (torch.randn(E, M, N, generator=g) / M**0.5).to(device, dtype)
    b1 = (0.1 * torch.randn(E, N, generator=g)).to(device, dtype)
    w2 = (torch.randn(E, N, M, generator=g) / N**0.5).to(device, dtype)
    leaves = [leaf(t) for t in (x, weight, w1, b1, w2)]
    out, sizes = _moe_ffn(permute, unpermute, grouped_gemm, leaves[0], expert, *leaves[1:], E)
    assert sizes[3] == 0
    assert int(sizes.sum()) == S * K - 1
    grad = torch.randn_like(out)
    out.backward(grad)
    refs = fp32_leaves(*leaves)
    ref, _ = _moe_ffn(*oracles, refs[0], expert, *refs[1:], E)
    ref.backward(grad.float())
    tol = TOL[dtype]
    assert out.dtype == dtype
    assert_close("out", out, ref, tol, tol)
    for name, got, want in zip(("dx", "dweight", "dw1", "db1", "dw2"), leaves, refs,
                               strict=True):
        assert_close(name, got.grad, want.grad, tol, tol)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("K", [1, 2])
def test_dropless_pipeline_matches_reference(monkeypatch, dtype, K):
    oracles = (forbid_reference(monkeypatch, disp_mod, "permute_reference"),
               forbid_reference(monkeypatch, disp_mod, "unpermute_reference"),
               forbid_reference(monkeypatch, gmm_mod, "grouped_gemm_reference"))
    # 29 tokens over 5 experts: groups of a few rows each, none a multiple of the 16-row tile
    _check_pipeline(29, K, 5, 24, 40, dtype, "cpu", oracles)


@interpreter_only
def test_permute_layout(monkeypatch):
    """Rows grouped by expert, token order inside a group; unpermute with unit weights of a
    permute sums each token's routed copies."""
    forbid_reference(monkeypatch, disp_mod, "permute_reference")
    forbid_reference(monkeypatch, disp_mod, "unpermute_reference")
    x = torch.arange(4.0).unsqueeze(1).repeat(1, 3)  # token s holds s
    expert = torch.tensor([[2, 0], [0, -1], [2, 1], [0, 2]])
    xs, sizes, order = permute(x, expert, 4)
    assert sizes.tolist() == [3, 1, 3, 0]
    assert order.tolist() == [1, 2, 6, 5, 0, 4, 7]
    assert xs[:, 0].tolist() == [0.0, 1.0, 3.0, 2.0, 0.0, 2.0, 3.0]
    back = unpermute(xs, order, torch.ones(4, 2))
    assert back[:, 0].tolist() == [0.0, 1.0, 4.0, 6.0]


def test_bad_inputs():
    x, w = torch.randn(10, 8), torch.randn(3, 8, 4)
    with pytest.raises(ValueError, match="group_sizes sum to 9 but x has 10 rows"):
        grouped_gemm(x, w, torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match="group_sizes has 2 entries but w holds 3 experts"):
        grouped_gemm(x, w, torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"group_sizes must be >= 0, not \[12, -2, 0\]"):
        grouped_gemm(x, w, torch.tensor([12, -2, 0]))
    with pytest.raises(ValueError, match="x has 8 columns but w"):
        grouped_gemm(x, torch.randn(3, 6, 4), torch.tensor([4, 3, 3]))
    with pytest.raises(TypeError, match="x and w must share one dtype"):
        grouped_gemm(x.half(), w, torch.tensor([4, 3, 3]))
    with pytest.raises(ValueError, match="w must be contiguous"):
        grouped_gemm(x, torch.randn(3, 4, 8).transpose(1, 2), torch.tensor([4, 3, 3]))
    with pytest.raises(ValueError, match=r"expert ids must be below num_experts \(3\), found 3"):
        permute(x, torch.tensor([[3]] * 10), 3)
    with pytest.raises(TypeError, match="expert must be int64, not int32"):
        permute(x, torch.zeros(10, 1, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="order has 2 entries but y has 10 rows"):
        unpermute(x, torch.tensor([0, 1]), torch.ones(10, 1))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dropless_pipeline_on_cuda(monkeypatch, dtype):
    oracles = (forbid_reference(monkeypatch, disp_mod, "permute_reference"),
               forbid_reference(monkeypatch, disp_mod, "unpermute_reference"),
               forbid_reference(monkeypatch, gmm_mod, "grouped_gemm_reference"))
    _check_pipeline(4093, 2, 8, 768, 3072, dtype, "cuda", oracles)
