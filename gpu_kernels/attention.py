"""FlashAttention-2 forward and backward in Triton, with a KV-cache offset (`past_len`).

`flash_attention(q, k, v, causal=True, past_len=0, scale=None)` takes (batch, heads, seq,
head_dim) tensors, the layout of `scaled_dot_product_attention`. `k`/`v` may be longer than
`q`: with past_len = P, query i sits at position P + i and sees keys 0..P + i, which is a
prompt chunk attending to a KV cache.

Algorithm (Dao, FlashAttention-2): each program holds one BLOCK_M tile of queries in on-chip
memory and streams key/value tiles past it with an online softmax (running max and sum, the
accumulator rescaled as the max grows), accumulating in FP32 whatever the input precision.
The forward saves only the output and the per-row logsumexp; the backward recomputes the
probabilities tile by tile from it: one kernel walks query tiles for each key tile (dK, dV),
another walks key tiles for each query tile (dQ), so no atomics are needed. Causal programs
stop at the diagonal, so they skip the tiles that are wholly masked.
"""

import math

import torch

from ._dispatch import (
    FLOATS,
    check_same_device,
    check_tensor,
    jit,
    tl,
    triton,
    use_triton,
)

__all__ = ["attention_reference", "flash_attention"]


# -- kernels --------------------------------------------------------------------------------




@jit
def _attn_fwd_tiles(acc, l_i, m_i, q, K, V, k_base, v_base, skt, svt, rows, lo, hi, Tk, past_len,
                    qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                    BLOCK_N: tl.constexpr, D: tl.constexpr):
    """Fold key/value tiles lo..hi into the online softmax (scores in the log2 domain).
    MASKED tiles check key bounds (and causality); the others are wholly visible."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            kt = tl.load(K + k_base + cols[None, :] * skt + offs_d[:, None],
                         mask=cols[None, :] < Tk, other=0.0)  # (D, BLOCK_N)
            v = tl.load(V + v_base + cols[:, None] * svt + offs_d[None, :],
                        mask=cols[:, None] < Tk, other=0.0)  # (BLOCK_N, D)
        else:
            kt = tl.load(K + k_base + cols[None, :] * skt + offs_d[:, None])
            v = tl.load(V + v_base + cols[:, None] * svt + offs_d[None, :])
        s = tl.dot(q, kt) * qk_scale  # (BLOCK_M, BLOCK_N) fp32, log2 units
        if MASKED:
            valid = cols[None, :] < Tk
            if CAUSAL:
                valid = valid & (cols[None, :] <= past_len + rows[:, None])
            s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: key 0 is visible to every query
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@jit
def _attn_fwd(Q, K, V, Out, LSE,  # LSE: (B*H, Tq) fp32, natural log
              sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
              H, Tq, Tk, past_len, scale,
              CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :],
                mask=rows[:, None] < Tq, other=0.0)  # (BLOCK_M, D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    qk_scale = scale * 1.4426950408889634  # log2(e): scores in log2 units for exp2
    k_base = b * skb + h * skh
    v_base = b * svb + h * svh
    # tiles every query of this tile sees in full, then the ragged / diagonal ones, masked
    full_end = Tk // BLOCK_N * BLOCK_N
    hi = Tk
    if CAUSAL:
        full_end = tl.minimum(full_end, (past_len + m0 + 1) // BLOCK_N * BLOCK_N)
        hi = tl.minimum(Tk, past_len + m0 + BLOCK_M)
    acc, l_i, m_i = _attn_fwd_tiles(acc, l_i, m_i, q, K, V, k_base, v_base, skt, svt, rows, 0,
                                    full_end, Tk, past_len, qk_scale, False, CAUSAL, BLOCK_N, D)
    acc, l_i, m_i = _attn_fwd_tiles(acc, l_i, m_i, q, K, V, k_base, v_base, skt, svt, rows,
                                    full_end, hi, Tk, past_len, qk_scale, True, CAUSAL, BLOCK_N,
                                    D)
    acc = acc / l_i[:, None]
    tl.store(Out + b * sob + h * soh + rows[:, None] * sot + offs_d[None, :],
             acc.to(Out.dtype.element_ty), mask=rows[:, None] < Tq)
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # back to natural log: * ln(2)
    tl.store(LSE + bh * Tq + rows, lse, mask=rows < Tq)


@jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV,  # DO, DK, DV share Q/K/V's strides
                   sqb, sqh, sqt, skb, skh, skt,
                   H, Tq, Tk, past_len, scale,
                   CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   D: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    kv_off = b * skb + h * skh + cols[:, None] * skt + offs_d[None, :]
    k = tl.load(K + kv_off, mask=cols[:, None] < Tk, other=0.0)  # (BLOCK_N, D)
    v = tl.load(V + kv_off, mask=cols[:, None] < Tk, other=0.0)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    lo = 0
    if CAUSAL:  # the first query that sees key pid_n * BLOCK_N sits at that key - past_len
        lo = tl.maximum(pid_n * BLOCK_N - past_len, 0) // BLOCK_M * BLOCK_M
    for start_m in range(lo, Tq, BLOCK_M):
        rows = start_m + offs_m
        q_off = b * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :]
        q = tl.load(Q + q_off, mask=rows[:, None] < Tq, other=0.0)  # (BLOCK_M, D)
        do = tl.load(DO + q_off, mask=rows[:, None] < Tq, other=0.0)
        lse = tl.load(LSE + bh * Tq + rows, mask=rows < Tq, other=0.0)
        delta = tl.load(DELTA + bh * Tq + rows, mask=rows < Tq, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
        valid = (rows[:, None] < Tq) & (cols[None, :] < Tk)
        if CAUSAL:
            valid = valid & (cols[None, :] <= past_len + rows[:, None])
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None]) * scale
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(DK + kv_off, dk.to(DK.dtype.element_ty), mask=cols[:, None] < Tk)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=cols[:, None] < Tk)


@jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ,
                 sqb, sqh, sqt, skb, skh, skt,
                 H, Tq, Tk, past_len, scale,
                 CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q_off = b * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :]
    q = tl.load(Q + q_off, mask=rows[:, None] < Tq, other=0.0)
    do = tl.load(DO + q_off, mask=rows[:, None] < Tq, other=0.0)
    lse = tl.load(LSE + bh * Tq + rows, mask=rows < Tq, other=0.0)
    delta = tl.load(DELTA + bh * Tq + rows, mask=rows < Tq, other=0.0)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    hi = Tk
    if CAUSAL:
        hi = tl.minimum(Tk, past_len + (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_off = b * skb + h * skh + cols[:, None] * skt + offs_d[None, :]
        k = tl.load(K + kv_off, mask=cols[:, None] < Tk, other=0.0)  # (BLOCK_N, D)
        v = tl.load(V + kv_off, mask=cols[:, None] < Tk, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        valid = (rows[:, None] < Tq) & (cols[None, :] < Tk)
        if CAUSAL:
            valid = valid & (cols[None, :] <= past_len + rows[:, None])
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None]) * scale
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=rows[:, None] < Tq)


# -- launch ---------------------------------------------------------------------------------


def _blocks(q: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): GPU tiles, or large tiles for the CPU interpreter."""
    D = q.shape[-1]
    if q.device.type != "cuda":
        return 32, 32, 4
    if D <= 64:
        return 64, 64, 4
    return (64, 64, 8) if D <= 128 else (32, 32, 8)


def _contig(t: torch.Tensor) -> torch.Tensor:
    """The same tensor with unit stride over seq and head_dim rows (no copy when it has it)."""
    return t if t.stride(-1) == 1 else t.contiguous()


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, past_len: int, scale: float):
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(B * H, Tq, device=q.device, dtype=torch.float32)
        BM, BN, warps = _blocks(q)
        _attn_fwd[(triton.cdiv(Tq, BM), B * H)](
            q, k, v, o, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *o.stride()[:3], H, Tq, Tk, past_len, scale,
            CAUSAL=causal, BLOCK_M=BM, BLOCK_N=BN, D=D, num_warps=warps)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.past_len, ctx.scale = causal, past_len, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        # one layout for q/do/dq and one for k/v/dk/dv, so each kernel takes one set of strides
        q, do = q.contiguous(), do.contiguous()
        k, v = k.contiguous(), v.contiguous()
        delta = (do.float() * o.float()).sum(-1).reshape(B * H, Tq)  # rowsum(dO * O)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        BM, BN, warps = _blocks(q)
        args = (*q.stride()[:3], *k.stride()[:3], H, Tq, Tk, ctx.past_len, ctx.scale)
        meta = {"CAUSAL": ctx.causal, "BLOCK_M": BM, "BLOCK_N": BN, "D": D, "num_warps": warps}
        _attn_bwd_dkdv[(triton.cdiv(Tk, BN), B * H)](q, k, v, do, lse, delta, dk, dv, *args,
                                                     **meta)
        _attn_bwd_dq[(triton.cdiv(Tq, BM), B * H)](q, k, v, do, lse, delta, dq, *args, **meta)
        return dq, dk, dv, None, None, None


# -- public ---------------------------------------------------------------------------------


def attention_reference(q, k, v, causal: bool = True, past_len: int = 0,
                        scale: float | None = None) -> torch.Tensor:
    """The same attention in plain torch, FP32 inside (the fallback and the tests' oracle)."""
    Tq, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if causal:  # key j is visible to query i when j <= past_len + i
        visible = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(past_len)
        s = s.masked_fill(~visible, float("-inf"))
    return (s.softmax(dim=-1) @ v.float()).to(q.dtype)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    past_len: int = 0, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) v for (batch, heads, seq, head_dim) tensors.

    q (B, H, Tq, D); k, v (B, H, Tk, D) with Tk >= past_len + Tq when causal. Returns
    (B, H, Tq, D) in q's dtype. Differentiable in q, k and v. Runs the Triton kernels where
    Triton can run (see `gpu_kernels.triton_available`), `attention_reference` elsewhere.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, FLOATS, ndim=4)
    check_same_device(q=q, k=k, v=v)
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must share one dtype, not {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, Tq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, not {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"k (B, H, Tk, D) = {tuple(k.shape)} does not match q (B, H, Tq, D) "
                         f"= {tuple(q.shape)} in batch, heads or head_dim")
    Tk = k.shape[2]
    if Tq == 0 or Tk == 0:
        raise ValueError(f"q and k need at least one position, not Tq={Tq}, Tk={Tk}")
    if not isinstance(past_len, int) or isinstance(past_len, bool) or past_len < 0:
        raise ValueError(f"past_len must be an integer >= 0, not {past_len!r}")
    if causal and past_len + Tq > Tk:
        raise ValueError(f"past_len ({past_len}) + query length ({Tq}) exceeds the key length "
                         f"({Tk}): query i sits at past_len + i and needs keys up to there")
    if not causal and past_len:
        raise ValueError(f"past_len ({past_len}) only applies to causal attention")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale must be a positive number, not {scale!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim (stride 1), not stride "
                             f"{t.stride(-1)}; call .contiguous() first")
    if not use_triton(q):
        return attention_reference(q, k, v, causal, past_len, float(scale))
    if D & (D - 1) or not 16 <= D <= 256:
        raise ValueError(f"head_dim must be a power of two from 16 to 256 for the Triton path, "
                         f"not {D}")
    return _FlashAttention.apply(_contig(q), _contig(k), _contig(v), bool(causal), past_len,
                                 float(scale))
