"""Fused LayerNorm, forward and backward, in Triton.

`layer_norm(x, weight, bias, eps)` normalises the last dimension of x (..., N), like
`F.layer_norm(x, (N,), weight, bias, eps)`. The forward reads each row once, keeps it in
registers for the mean, variance, normalisation and affine step, and saves the per-row mean and
1/std (FP32) for the backward. The backward recomputes x-hat from them, writes dx in the same
pass, and accumulates dweight/dbias partial sums per program over a band of rows (FP32), which
one small sum then reduces: no atomics and no (rows, N) temporary.
"""

import torch
import torch.nn.functional as F

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

__all__ = ["layer_norm", "layer_norm_reference"]


@jit
def _ln_fwd(X, W, B, Y, MEAN, RSTD, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / N
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * N + cols, (xc * rstd * w + b).to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@jit
def _ln_bwd(X, W, DY, DX, MEAN, RSTD, DW_PART, DB_PART, M, N, rows_per_prog,
            BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], tl.float32)
    db = tl.zeros([BLOCK_N], tl.float32)
    first = pid * rows_per_prog
    last = tl.minimum(first + rows_per_prog, M)
    for row in range(first, last):
        x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, 0) / N
        c2 = tl.sum(wdy, 0) / N
        dx = (wdy - (xhat * c1 + c2)) * rstd
        tl.store(DX + row * N + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    tl.store(DW_PART + pid * N + cols, dw, mask=mask)
    tl.store(DB_PART + pid * N + cols, db, mask=mask)


def _warps(block_n: int) -> int:
    return min(16, max(1, block_n // 256))


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        N = x.shape[-1]
        x2 = x.reshape(-1, N)  # (M, N), contiguous (checked by the caller)
        M = x2.shape[0]
        y = torch.empty_like(x2)
        mean = torch.empty(M, device=x.device, dtype=torch.float32)
        rstd = torch.empty(M, device=x.device, dtype=torch.float32)
        BN = next_pow2(N)
        if M:
            _ln_fwd[(M,)](x2, weight, bias, y, mean, rstd, N, eps, BLOCK_N=BN,
                          num_warps=_warps(BN))
        ctx.save_for_backward(x2, weight, mean, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        M, N = x2.shape
        dy2 = dy.reshape(M, N).contiguous()
        dx = torch.empty_like(x2)
        BN = next_pow2(N)
        progs = max(1, min(M, 4 * _sm_count(x2.device)))
        rows_per = triton.cdiv(max(M, 1), progs)
        dw_part = torch.zeros(progs, N, device=x2.device, dtype=torch.float32)
        db_part = torch.zeros(progs, N, device=x2.device, dtype=torch.float32)
        if M:
            _ln_bwd[(progs,)](x2, weight, dy2, dx, mean, rstd, dw_part, db_part, M, N, rows_per,
                              BLOCK_N=BN, num_warps=_warps(BN))
        dw = dw_part.sum(0).to(weight.dtype)
        db = db_part.sum(0).to(weight.dtype)
        return dx.view(dy.shape), dw, db, None


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # the interpreter: few programs, each looping over many rows


def layer_norm_reference(x, weight, bias, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension: x (..., N), weight (N,), bias (N,) -> (..., N).

    Differentiable in all three. Statistics in FP32 whatever x's dtype. x must be contiguous.
    """
    check_tensor("x", x, FLOATS)
    check_tensor("weight", weight, FLOATS, ndim=1)
    check_tensor("bias", bias, FLOATS, ndim=1)
    check_same_device(x=x, weight=weight, bias=bias)
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x needs a non-empty last dimension, not shape {tuple(x.shape)}")
    N = x.shape[-1]
    if weight.shape != (N,) or bias.shape != (N,):
        raise ValueError(f"weight and bias must have shape ({N},) to match x's last dimension, "
                         f"not {tuple(weight.shape)} and {tuple(bias.shape)}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, not {eps!r}")
    if not x.is_contiguous():
        raise ValueError(f"x must be contiguous (strides {tuple(x.stride())} for shape "
                         f"{tuple(x.shape)}); call .contiguous() first")
    if not use_triton(x):
        return layer_norm_reference(x, weight, bias, eps)
    return _LayerNorm.apply(x, weight.contiguous(), bias.contiguous(), float(eps))
