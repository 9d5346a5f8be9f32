"""The LM head fused with its cross-entropy loss, chunked over the vocabulary.

`cross_entropy(hidden, weight, targets, ignore_index=-100)` returns the mean loss of
`F.cross_entropy(hidden @ weight.T, targets)` without ever holding the logits of the whole
vocabulary: it walks the vocabulary in chunks of `chunk_size` rows of `weight`. For each chunk
one matmul (cuBLAS on a GPU) gives the (N, chunk) logits in the input dtype, and a Triton kernel
folds them into each row's running max, running sum of exponentials and target logit (an online
logsumexp in FP32), so the chunk can be dropped before the next. The backward walks the chunks
again: it recomputes each chunk's logits, a Triton kernel turns them in place into
(softmax - one_hot(target)) * dloss / n_valid, and two matmuls add that chunk's share to
dhidden and write its rows of dweight. Peak extra memory is one (N, chunk) block plus an
(N, C) FP32 accumulator, instead of (N, V) FP32 logits and their gradient.
"""

import torch
import torch.nn.functional as F

from ._dispatch import FLOATS, check_same_device, check_tensor, jit, next_pow2, tl, use_triton

__all__ = ["cross_entropy", "cross_entropy_reference"]


@jit
def _ce_fwd_chunk(LOGITS, TARGETS, M, S, TGT, stride_row, Vc, v0,
                  BLOCK_V: tl.constexpr):
    """Fold row `row` of one (N, Vc) logits chunk (vocab ids v0..v0+Vc) into the row's running
    max M, sum of exp(logit - M) S, and target logit TGT (FP32)."""
    row = tl.program_id(0)
    m = tl.load(M + row)
    s = tl.load(S + row)
    base = LOGITS + row * stride_row
    for start in range(0, Vc, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < Vc, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    tl.store(M + row, m)
    tl.store(S + row, s)
    t = tl.load(TARGETS + row) - v0
    inside = (t >= 0) & (t < Vc)
    t_safe = tl.where(inside, t, 0)
    x_t = tl.load(base + t_safe, mask=inside, other=0.0).to(tl.float32)
    tl.store(TGT + row, x_t, mask=inside)


@jit
def _ce_bwd_chunk(LOGITS, TARGETS, LSE, SCALE, stride_row, Vc, v0, BLOCK_V: tl.constexpr):
    """In place: logits -> (exp(logit - lse) - [col == target]) * scale for one row."""
    row = tl.program_id(0)
    lse = tl.load(LSE + row)
    scale = tl.load(SCALE + row)
    t = tl.load(TARGETS + row) - v0
    base = LOGITS + row * stride_row
    for start in range(0, Vc, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < Vc
        x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        grad = (tl.exp(x - lse) - tl.where(cols == t, 1.0, 0.0)) * scale
        tl.store(base + cols, grad.to(LOGITS.dtype.element_ty), mask=mask)


def _block_v(device: torch.device, Vc: int) -> int:
    return min(next_pow2(Vc), 2048 if device.type == "cuda" else 128)


def default_chunk_size(n_rows: int, vocab: int) -> int:
    """Vocabulary rows per chunk: about 2**26 logits per chunk, between 1024 and 8192."""
    return min(vocab, max(1024, min(8192, 2**26 // max(n_rows, 1))))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    # under CUDA autocast the backward's recomputed logits use the forward's precision
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk: int):
        N = hidden.shape[0]
        V = weight.shape[0]
        dev = hidden.device
        m = torch.full((N,), float("-inf"), device=dev, dtype=torch.float32)
        s = torch.zeros(N, device=dev, dtype=torch.float32)
        tgt = torch.zeros(N, device=dev, dtype=torch.float32)
        for v0 in range(0, V, chunk):
            logits = hidden @ weight[v0:v0 + chunk].t()  # (N, Vc) in the input dtype
            Vc = logits.shape[1]
            _ce_fwd_chunk[(N,)](logits, targets, m, s, tgt, logits.stride(0), Vc, v0,
                                BLOCK_V=_block_v(dev, Vc), num_warps=8 if Vc >= 2048 else 4)
        lse = m + torch.log(s)  # (N,)
        valid = targets != ignore_index
        n_valid = valid.sum()
        loss = torch.where(valid, lse - tgt, 0.0).sum() / n_valid  # nan when nothing counts
        ctx.save_for_backward(hidden, weight, targets, lse, valid, n_valid)
        ctx.chunk = chunk
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dloss):
        hidden, weight, targets, lse, valid, n_valid = ctx.saved_tensors
        chunk = ctx.chunk
        N, C = hidden.shape
        V = weight.shape[0]
        dev = hidden.device
        scale = torch.where(valid, dloss.float() / n_valid, 0.0).contiguous()  # (N,)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dhidden = torch.zeros(N, C, device=dev, dtype=torch.float32) if want_h else None
        dweight = torch.empty_like(weight) if want_w else None
        for v0 in range(0, V, chunk):
            w = weight[v0:v0 + chunk]  # (Vc, C)
            dlogits = hidden @ w.t()  # (N, Vc): recomputed, then turned into its gradient
            Vc = dlogits.shape[1]
            _ce_bwd_chunk[(N,)](dlogits, targets, lse, scale, dlogits.stride(0), Vc, v0,
                                BLOCK_V=_block_v(dev, Vc), num_warps=8 if Vc >= 2048 else 4)
            if want_h:
                dhidden += (dlogits @ w).float()
            if want_w:
                dweight[v0:v0 + Vc] = dlogits.t() @ hidden
        return (None if dhidden is None else dhidden.to(hidden.dtype)), dweight, None, None, None


def cross_entropy_reference(hidden, weight, targets, ignore_index: int = -100) -> torch.Tensor:
    """What users would otherwise write: full logits, upcast, F.cross_entropy."""
    return F.cross_entropy((hidden @ weight.t()).float(), targets, ignore_index=ignore_index)


def cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                  ignore_index: int = -100, chunk_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits hidden @ weight.T against targets, chunked over V.

    hidden (N, C), weight (V, C) in one float dtype, targets (N,) int64 with values in
    0..V-1 or `ignore_index` (those rows do not count; the mean is over the others). Returns
    a () FP32 loss, differentiable in hidden and weight. `chunk_size`: vocabulary rows per
    chunk (default: about 2**26 logits per chunk).
    """
    check_tensor("hidden", hidden, FLOATS, ndim=2)
    check_tensor("weight", weight, FLOATS, ndim=2)
    check_tensor("targets", targets, (torch.int64,), ndim=1)
    check_same_device(hidden=hidden, weight=weight, targets=targets)
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight must share one dtype, not {hidden.dtype} and "
                        f"{weight.dtype}")
    N, C = hidden.shape
    V = weight.shape[0]
    if weight.shape[1] != C:
        raise ValueError(f"weight (V, C) = {tuple(weight.shape)} does not match hidden (N, C) = "
                         f"{tuple(hidden.shape)}: C differs")
    if targets.shape[0] != N:
        raise ValueError(f"targets has {targets.shape[0]} entries but hidden has {N} rows")
    if N == 0 or V == 0:
        raise ValueError(f"need at least one row and one vocabulary entry, not N={N}, V={V}")
    if not isinstance(ignore_index, int) or 0 <= ignore_index < V:
        raise ValueError(f"ignore_index must be an integer outside 0..{V - 1}, not "
                         f"{ignore_index!r}")
    bad = ((targets < 0) | (targets >= V)) & (targets != ignore_index)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets[{i}] = {int(targets[i])} is outside the vocabulary "
                         f"(0..{V - 1}) and is not ignore_index ({ignore_index})")
    if chunk_size is None:
        chunk_size = default_chunk_size(N, V)
    elif not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, not {chunk_size!r}")
    if not use_triton(hidden):
        return cross_entropy_reference(hidden, weight, targets, ignore_index)
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets.contiguous(), ignore_index,
                                          min(chunk_size, V))
