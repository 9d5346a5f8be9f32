"""Dropless MoE dispatch: `permute` sorts token copies by expert, `unpermute` inverts the sort
and combines each token's expert outputs with its gate weights. Both are Triton row-gather /
row-combine kernels with their backward (the adjoint of a gather is a combine, and back).

With S tokens, K choices per token and E experts, `expert` (S, K) names each choice's expert,
or is negative for a choice that is not routed (dropped, or masked out). The R routed choices
are laid out expert by expert (stable: token order inside an expert), so expert e owns the
contiguous rows group_sizes[:e].sum() .. + group_sizes[e] of the permuted tensor, which is
what `grouped_gemm` consumes. No capacity, no padding, nothing dropped.
"""

import torch

from ._dispatch import (
    FLOATS,
    check_same_device,
    check_tensor,
    jit,
    next_pow2,
    tl,
    triton,
    use_triton,
)

__all__ = ["permute", "permute_reference", "unpermute", "unpermute_reference"]


@jit
def _gather_rows(X, SRC, SCALE, Y, M, HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """Y[i] = X[SRC[i]] (* SCALE[i])."""
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < M
    src = tl.load(SRC + i)
    x = tl.load(X + src * M + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        x = x * tl.load(SCALE + i).to(tl.float32)
    tl.store(Y + i * M + cols, x.to(Y.dtype.element_ty), mask=mask)


@jit
def _combine_rows(Y, INV, W, OUT, K, M, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    """OUT[s] = sum_k W[s, k] * Y[INV[s, k]] over the routed choices (INV >= 0), in FP32."""
    s = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < M
    acc = tl.zeros([BLOCK], tl.float32)
    for k in range(K):
        r = tl.load(INV + s * K + k)
        routed = r >= 0
        width = tl.where(routed, M, 0)  # a routed row's columns, or none
        y = tl.load(Y + tl.where(routed, r, 0) * M + cols, mask=cols < width,
                    other=0.0).to(tl.float32)
        if HAS_W:
            y = y * tl.load(W + s * K + k).to(tl.float32)
        acc += y
    tl.store(OUT + s * M + cols, acc.to(OUT.dtype.element_ty), mask=mask)


@jit
def _choice_dot(DOUT, Y, INV, DW, K, M, BLOCK: tl.constexpr):
    """DW[s, k] = <DOUT[s], Y[INV[s, k]]>, 0 for a choice that is not routed."""
    c = tl.program_id(0)
    s = c // K
    r = tl.load(INV + c)
    routed = r >= 0
    r = tl.where(routed, r, 0)
    width = tl.where(routed, M, 0)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, M, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < width
        d = tl.load(DOUT + s * M + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + r * M + cols, mask=mask, other=0.0).to(tl.float32)
        acc += d * y
    tl.store(DW + c, tl.sum(acc, 0))


def _block(M: int, device: torch.device) -> int:
    return min(next_pow2(M), 1024 if device.type == "cuda" else 256)


def _gather(x, src, scale, out_dtype):
    R, M = src.shape[0], x.shape[1]
    y = torch.empty(R, M, device=x.device, dtype=out_dtype)
    if R and M:
        BLOCK = _block(M, x.device)
        _gather_rows[(R, triton.cdiv(M, BLOCK))](x, src, x if scale is None else scale, y, M,
                                                 HAS_SCALE=scale is not None, BLOCK=BLOCK)
    return y


def _combine(y, inv, weight, S, K, out_dtype):
    M = y.shape[1]
    out = torch.empty(S, M, device=y.device, dtype=out_dtype)
    if S and M:
        BLOCK = _block(M, y.device)
        _combine_rows[(S, triton.cdiv(M, BLOCK))](y, inv, y if weight is None else weight, out,
                                                  K, M, HAS_W=weight is not None, BLOCK=BLOCK)
    return out


class _Permute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, src, inv, K: int):
        ctx.save_for_backward(inv)
        ctx.K, ctx.S = K, x.shape[0]
        return _gather(x, src, None, x.dtype)

    @staticmethod
    def backward(ctx, dy):
        (inv,) = ctx.saved_tensors
        return _combine(dy.contiguous(), inv, None, ctx.S, ctx.K, dy.dtype), None, None, None


class _Unpermute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weight, order, inv):
        S, K = weight.shape
        ctx.save_for_backward(y, weight, order, inv)
        return _combine(y, inv, weight, S, K, y.dtype)

    @staticmethod
    def backward(ctx, dout):
        y, weight, order, inv = ctx.saved_tensors
        S, K = weight.shape
        dout = dout.contiguous()
        dy = dweight = None
        if ctx.needs_input_grad[0]:  # dy[i] = weight[choice i] * dout[token of choice i]
            dy = _gather(dout, torch.div(order, K, rounding_mode="floor"),
                         weight.reshape(-1)[order].contiguous(), y.dtype)
        if ctx.needs_input_grad[1]:
            dw = torch.empty(S * K, device=y.device, dtype=torch.float32)
            if S * K:
                _choice_dot[(S * K,)](dout, y, inv, dw, K, y.shape[1],
                                      BLOCK=_block(y.shape[1], y.device))
            dweight = dw.view(S, K).to(weight.dtype)
        return dy, dweight, None, None


def _routing(expert: torch.Tensor, num_experts: int):
    """order (R,): routed choices (flat s*K + k) by expert; group_sizes (E,); inv (S*K,)."""
    flat = expert.reshape(-1)
    key = torch.where(flat >= 0, flat, num_experts)  # not routed: after every expert
    counts = torch.bincount(key, minlength=num_experts + 1)
    group_sizes = counts[:num_experts]
    R = int(group_sizes.sum())  # sizes the output: the one host read
    order = torch.sort(key, stable=True).indices[:R]
    inv = torch.full_like(flat, -1)
    inv[order] = torch.arange(R, device=flat.device)
    return order, group_sizes, inv


def _check_expert(expert, num_experts: int, S: int | None = None) -> None:
    check_tensor("expert", expert, (torch.int64,), ndim=2)
    if not isinstance(num_experts, int) or isinstance(num_experts, bool) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive integer, not {num_experts!r}")
    if S is not None and expert.shape[0] != S:
        raise ValueError(f"expert has {expert.shape[0]} rows but x has {S} tokens")
    if expert.numel() and int(expert.max()) >= num_experts:
        raise ValueError(f"expert ids must be below num_experts ({num_experts}), found "
                         f"{int(expert.max())}")


def permute_reference(x, expert, num_experts: int):
    order, group_sizes, _ = _routing(expert, num_experts)
    K = expert.shape[1]
    return x[torch.div(order, K, rounding_mode="floor")], group_sizes, order


def unpermute_reference(y, order, weight):
    S, K = weight.shape
    w = weight.reshape(-1)[order].to(torch.float32).unsqueeze(1)  # (R, 1)
    out = torch.zeros(S, y.shape[1], device=y.device, dtype=torch.float32)
    out = out.index_add(0, torch.div(order, K, rounding_mode="floor"), y.float() * w)
    return out.to(y.dtype)


def permute(x: torch.Tensor, expert: torch.Tensor, num_experts: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort token copies by expert. x (S, M); expert (S, K) int64, negative = not routed.

    Returns (x_sorted (R, M), group_sizes (E,) int64, order (R,) int64) where R counts the
    routed choices, rows are grouped by expert in token order, and order[i] = s * K + k is the
    choice that row i carries (pass it to `unpermute`). Differentiable in x.
    """
    check_tensor("x", x, FLOATS, ndim=2)
    _check_expert(expert, num_experts, x.shape[0])
    check_same_device(x=x, expert=expert)
    if not x.is_contiguous():
        raise ValueError(f"x must be contiguous (strides {tuple(x.stride())}); call "
                         ".contiguous() first")
    if not use_triton(x):
        return permute_reference(x, expert, num_experts)
    order, group_sizes, inv = _routing(expert, num_experts)
    K = expert.shape[1]
    src = torch.div(order, K, rounding_mode="floor")
    return _Permute.apply(x, src, inv, K), group_sizes, order


def unpermute(y: torch.Tensor, order: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Invert `permute` and combine: out[s] = sum_k weight[s, k] * y[row of choice (s, k)].

    y (R, M) expert outputs in permuted order; order (R,) from `permute`; weight (S, K) gate
    weights (choices that were not routed contribute nothing). Returns (S, M) in y's dtype,
    accumulated in FP32. Differentiable in y and weight.
    """
    check_tensor("y", y, FLOATS, ndim=2)
    check_tensor("order", order, (torch.int64,), ndim=1)
    check_tensor("weight", weight, FLOATS, ndim=2)
    check_same_device(y=y, order=order, weight=weight)
    if order.shape[0] != y.shape[0]:
        raise ValueError(f"order has {order.shape[0]} entries but y has {y.shape[0]} rows")
    S, K = weight.shape
    if order.numel() and not 0 <= int(order.min()) <= int(order.max()) < S * K:
        raise ValueError(f"order entries must lie in 0..{S * K - 1} (S * K choices of weight)")
    if not y.is_contiguous():
        raise ValueError(f"y must be contiguous (strides {tuple(y.stride())}); call "
                         ".contiguous() first")
    if not use_triton(y):
        return unpermute_reference(y, order, weight)
    inv = torch.full((S * K,), -1, device=y.device, dtype=torch.int64)
    inv[order] = torch.arange(order.shape[0], device=y.device)
    return _Unpermute.apply(y, weight.contiguous(), order.contiguous(), inv)
