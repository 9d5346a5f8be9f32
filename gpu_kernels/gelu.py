"""Fused bias + GELU, forward and backward, in Triton.

`bias_gelu(x, bias, approximate="tanh")` is `F.gelu(x + bias, approximate=...)` in one pass
over x: the bias add, the GELU (the tanh form GPT-2 uses, or the exact erf form) and the cast
happen in registers, in FP32. The backward recomputes u = x + bias from the saved input instead
of storing it, and produces dx in one pass; dbias is the column sum of dx.
"""

import torch
import torch.nn.functional as F

from ._dispatch import FLOATS, check_same_device, check_tensor, jit, tl, triton, use_triton

__all__ = ["bias_gelu", "bias_gelu_reference"]

APPROXIMATIONS = ("tanh", "none")
# constants are written as literals inside the kernels (a jit function reads no plain global):
# 0.7978845608028654 = sqrt(2 / pi), 0.7071067811865476 = 1 / sqrt(2),
# 0.3989422804014327 = 1 / sqrt(2 pi)


@jit
def _tanh(a):
    """tanh from exp(-2|a|), which never overflows (1 - 2 / (exp(2a) + 1) does)."""
    e = tl.exp(-2.0 * tl.abs(a))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(a < 0, -t, t)


@jit
def _gelu_fwd(X, B, Y, numel, N, HAS_BIAS: tl.constexpr, TANH: tl.constexpr,
              BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    u = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(B + offs % N, mask=mask, other=0.0).to(tl.float32)
    if TANH:
        t = _tanh(0.7978845608028654 * (u + 0.044715 * u * u * u))
        y = 0.5 * u * (1.0 + t)
    else:
        y = 0.5 * u * (1.0 + tl.erf(u * 0.7071067811865476))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@jit
def _gelu_bwd(X, B, DY, DX, numel, N, HAS_BIAS: tl.constexpr, TANH: tl.constexpr,
              BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    u = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(B + offs % N, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    if TANH:
        t = _tanh(0.7978845608028654 * (u + 0.044715 * u * u * u))
        grad = 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * 0.7978845608028654 * (
            1.0 + 3.0 * 0.044715 * u * u)
    else:
        grad = (0.5 * (1.0 + tl.erf(u * 0.7071067811865476))
                + u * tl.exp(-0.5 * u * u) * 0.3989422804014327)
    tl.store(DX + offs, (dy * grad).to(DX.dtype.element_ty), mask=mask)


_BLOCK = 1024


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, tanh: bool):
        y = torch.empty_like(x)
        numel, N = x.numel(), x.shape[-1]
        if numel:
            _gelu_fwd[(triton.cdiv(numel, _BLOCK),)](
                x, x if bias is None else bias, y, numel, N, HAS_BIAS=bias is not None,
                TANH=tanh, BLOCK=_BLOCK)
        ctx.save_for_backward(x, bias)
        ctx.tanh = tanh
        return y

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        numel, N = x.numel(), x.shape[-1]
        if numel:
            _gelu_bwd[(triton.cdiv(numel, _BLOCK),)](
                x, x if bias is None else bias, dy, dx, numel, N, HAS_BIAS=bias is not None,
                TANH=ctx.tanh, BLOCK=_BLOCK)
        dbias = None
        if bias is not None and ctx.needs_input_grad[1]:
            dbias = dx.reshape(-1, N).float().sum(0).to(bias.dtype)
        return dx, dbias, None


def bias_gelu_reference(x, bias=None, approximate: str = "tanh") -> torch.Tensor:
    return F.gelu(x if bias is None else x + bias, approximate=approximate)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None = None,
              approximate: str = "tanh") -> torch.Tensor:
    """GELU(x + bias): x (..., N), bias (N,) or None; approximate "tanh" (GPT-2's) or "none".

    Differentiable in x and bias. Computed in FP32, returned in x's dtype. x must be contiguous.
    """
    check_tensor("x", x, FLOATS)
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, not {approximate!r}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if bias is not None:
        check_tensor("bias", bias, FLOATS, ndim=1)
        check_same_device(x=x, bias=bias)
        if bias.shape[0] != x.shape[-1]:
            raise ValueError(f"bias must have shape ({x.shape[-1]},) to match x's last "
                             f"dimension, not {tuple(bias.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"x must be contiguous (strides {tuple(x.stride())} for shape "
                         f"{tuple(x.shape)}); call .contiguous() first")
    if not use_triton(x):
        return bias_gelu_reference(x, bias, approximate)
    return _BiasGelu.apply(x, None if bias is None else bias.contiguous(), approximate == "tanh")
