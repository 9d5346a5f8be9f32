"""`grouped_gemm`: one matmul per expert over variable-sized, contiguous row groups, in Triton.

x (R, K) holds the rows of expert 0, then expert 1, ... (`group_sizes` (E,) of them each, as
`permute` lays them out); w (E, K, N) holds one weight per expert; y[rows of e] = x[rows of e]
@ w[e] (+ bias[e]). Each program computes one BLOCK_M x BLOCK_N tile of one group, from a tile
schedule built from the group sizes, so a group of 5 rows costs one tile and an empty group
none: no padding to a capacity (MegaBlocks' point, without block-sparse matrices). The backward
is the same kernel on w transposed (dx, through strides: no copy) and a per-group x^T @ dy kernel
(dw), FP32 accumulation throughout.
"""

import torch

from ._dispatch import FLOATS, check_same_device, check_tensor, jit, tl, triton, use_triton

__all__ = ["grouped_gemm", "grouped_gemm_reference"]


@jit
def _gmm(X, W, B, Y, TILE_GROUP, TILE_ROW, GROUP_END,
         sxm, sxk, swe, swk, swn, sym, N, K,
         HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         BLOCK_K: tl.constexpr):
    """Y[rows, cols] = X[rows, :] @ W[e, :, cols] (+ B[e, cols]) for tile program_id(0)."""
    t = tl.program_id(0)
    e = tl.load(TILE_GROUP + t)
    row_end = tl.load(GROUP_END + e)
    rows = tl.load(TILE_ROW + t) + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        a = tl.load(X + rows[:, None] * sxm + ks[None, :] * sxk,
                    mask=(rows[:, None] < row_end) & (ks[None, :] < K), other=0.0)
        b = tl.load(W + e * swe + ks[:, None] * swk + cols[None, :] * swn,
                    mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0)
        acc += tl.dot(a, b)
    if HAS_BIAS:
        acc += tl.load(B + e * N + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * sym + cols[None, :], acc.to(Y.dtype.element_ty),
             mask=(rows[:, None] < row_end) & (cols[None, :] < N))


@jit
def _gmm_wgrad(X, DY, DW, GROUP_START, GROUP_END, K, N,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """DW[e, ks, cols] = X[rows of e, ks]^T @ DY[rows of e, cols] (zeros for an empty group)."""
    e = tl.program_id(0)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    start = tl.load(GROUP_START + e)
    end = tl.load(GROUP_END + e)
    offs_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_K, BLOCK_N], tl.float32)
    for r0 in range(start, end, BLOCK_M):
        rows = r0 + offs_m
        a = tl.load(X + rows[:, None] * K + ks[None, :],
                    mask=(rows[:, None] < end) & (ks[None, :] < K), other=0.0)  # (BM, BK)
        d = tl.load(DY + rows[:, None] * N + cols[None, :],
                    mask=(rows[:, None] < end) & (cols[None, :] < N), other=0.0)  # (BM, BN)
        acc += tl.dot(tl.trans(a), d)
    tl.store(DW + e * K * N + ks[:, None] * N + cols[None, :], acc.to(DW.dtype.element_ty),
             mask=(ks[:, None] < K) & (cols[None, :] < N))


def _blocks(device: torch.device) -> tuple[int, int, int]:
    return (64, 64, 32) if device.type == "cuda" else (16, 32, 32)


class _Schedule:
    """Per group start/end rows and the (group, first row) of every BLOCK_M row tile."""

    def __init__(self, group_sizes: torch.Tensor, block_m: int, device: torch.device) -> None:
        sizes = group_sizes.tolist()  # the tile count sizes the launch: one host read
        ends, tile_group, tile_row, start = [], [], [], 0
        for e, n in enumerate(sizes):
            for r in range(start, start + n, block_m):
                tile_group.append(e)
                tile_row.append(r)
            start += n
            ends.append(start)
        starts = [end - n for end, n in zip(ends, sizes, strict=True)]
        self.n_tiles = len(tile_group)

        def as_tensor(values):
            return torch.tensor(values, dtype=torch.int64, device=device)

        self.start, self.end = as_tensor(starts), as_tensor(ends)
        self.tile_group, self.tile_row = as_tensor(tile_group), as_tensor(tile_row)


def _run_gmm(x, w_strides, w, bias, sched, N, K, out_dtype):
    """x (R, K) @ per-group w (viewed through w_strides = (e, k, n) strides) -> (R, N)."""
    BM, BN, BK = _blocks(x.device)
    y = torch.empty(x.shape[0], N, device=x.device, dtype=out_dtype)
    if sched.n_tiles and N:
        _gmm[(sched.n_tiles, triton.cdiv(N, BN))](
            x, w, x if bias is None else bias, y, sched.tile_group, sched.tile_row, sched.end,
            x.stride(0), x.stride(1), *w_strides, y.stride(0), N, K,
            HAS_BIAS=bias is not None, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)
    return y


class _GroupedGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, group_sizes):
        _, K, N = w.shape
        sched = _Schedule(group_sizes, _blocks(x.device)[0], x.device)
        ctx.save_for_backward(x, w, group_sizes)
        ctx.sched, ctx.has_bias = sched, bias is not None
        return _run_gmm(x, w.stride(), w, bias, sched, N, K, x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, w, group_sizes = ctx.saved_tensors
        sched = ctx.sched
        E, K, N = w.shape
        dy = dy.contiguous()
        dx = dw = dbias = None
        if ctx.needs_input_grad[0]:  # dx = dy @ w[e]^T: w seen as (E, N, K) through strides
            sw = w.stride()
            dx = _run_gmm(dy, (sw[0], sw[2], sw[1]), w, None, sched, K, N, x.dtype)
        if ctx.needs_input_grad[1]:
            BM, BN, BK = _blocks(x.device)
            dw = torch.empty_like(w)
            if E and K and N:
                _gmm_wgrad[(E, triton.cdiv(K, BK), triton.cdiv(N, BN))](
                    x.contiguous(), dy, dw, sched.start, sched.end, K, N,
                    BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            group = torch.repeat_interleave(torch.arange(E, device=dy.device), group_sizes)
            dbias = torch.zeros(E, N, device=dy.device, dtype=torch.float32)
            dbias = dbias.index_add_(0, group, dy.float()).to(w.dtype)
        return dx, dw, dbias, None


def grouped_gemm_reference(x, w, group_sizes, bias=None) -> torch.Tensor:
    """A loop over experts: what users would otherwise write."""
    outs, start = [], 0
    for e, n in enumerate(group_sizes.tolist()):
        y = x[start:start + n] @ w[e]
        outs.append(y if bias is None else y + bias[e])
        start += n
    return torch.cat(outs) if outs else x.new_zeros(0, w.shape[2])


def grouped_gemm(x: torch.Tensor, w: torch.Tensor, group_sizes: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-expert matmul over contiguous row groups: x (R, K), w (E, K, N), group_sizes (E,)
    int64 summing to R, bias (E, N) or None -> (R, N) in x's dtype. Differentiable in x, w and
    bias. w must be contiguous; x may be any 2-D view."""
    check_tensor("x", x, FLOATS, ndim=2)
    check_tensor("w", w, FLOATS, ndim=3)
    check_tensor("group_sizes", group_sizes, (torch.int64,), ndim=1)
    check_same_device(x=x, w=w, group_sizes=group_sizes, bias=bias)
    if x.dtype != w.dtype:
        raise TypeError(f"x and w must share one dtype, not {x.dtype} and {w.dtype}")
    E, K, N = w.shape
    if x.shape[1] != K:
        raise ValueError(f"x has {x.shape[1]} columns but w (E, K, N) = {tuple(w.shape)} expects "
                         f"K = {K}")
    if group_sizes.shape[0] != E:
        raise ValueError(f"group_sizes has {group_sizes.shape[0]} entries but w holds {E} "
                         "experts")
    if group_sizes.numel() and int(group_sizes.min()) < 0:
        raise ValueError(f"group_sizes must be >= 0, not {group_sizes.tolist()}")
    total = int(group_sizes.sum())
    if total != x.shape[0]:
        raise ValueError(f"group_sizes sum to {total} but x has {x.shape[0]} rows; each row must "
                         "belong to exactly one expert group")
    if bias is not None:
        check_tensor("bias", bias, FLOATS, ndim=2)
        if bias.shape != (E, N) or bias.dtype != w.dtype:
            raise ValueError(f"bias must be ({E}, {N}) {w.dtype} to match w, not "
                             f"{tuple(bias.shape)} {bias.dtype}")
    if not w.is_contiguous():
        raise ValueError(f"w must be contiguous (strides {tuple(w.stride())}); call "
                         ".contiguous() first")
    if not use_triton(x):
        return grouped_gemm_reference(x, w, group_sizes, bias)
    return _GroupedGemm.apply(x, w, None if bias is None else bias.contiguous(), group_sizes)
