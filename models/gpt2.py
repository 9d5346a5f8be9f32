"""The golden GPT-2: the PyTorch model every Tandem backend is checked against.

Module names equal HF checkpoint keys (`transformer.h.0.attn.c_attn.weight`, ...) and the
projections store their weights as (in, out), as HF's GPT-2 does, so a checkpoint's tensors load
without transposes. The arithmetic is written out (no fused SDPA) so that it reads as the
specification the accelerator implements.

Contract: `forward(input_ids, past=None) -> (logits, present)` where `present` holds one
`(k, v)` pair per layer, each (B, n_head, T_past + T, head_dim); passing it back as `past` continues
the sequence, and equals running the whole sequence at once.

Kernels: `GPT2LMHead(config, kernels="torch" | "triton" | "auto")` (not part of the checkpoint
config). "torch" is the written-out arithmetic below. "triton" runs attention, LayerNorm, the
FFN's bias + GELU and (in `lm_loss`) the LM head + cross-entropy on the fused `gpu_kernels`
(FlashAttention-2 and friends) wherever Triton can run, and on their torch references elsewhere;
"auto" is "triton" on CUDA and "torch" elsewhere. Both paths compute the same function: the
tests bound the difference of logits and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gpu_kernels import (
    bias_gelu,
    cross_entropy,
    flash_attention,
    layer_norm,
    resolve_kernels,
)

from . import checkpoint
from .config import ACTIVATIONS, GPT2Config
from .errors import PromptError
from .sampling import sample_next

__all__ = ["GPT2LMHead", "GPT2Model", "KVCache", "LayerNorm"]

#: One (k, v) pair per layer, each (B, n_head, T, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class Projection(nn.Module):
    """y = x @ weight + bias, with weight stored (in, out) as in GPT-2 checkpoints."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(
            *x.shape[:-1], -1
        )


class _Kernels:
    """Mixin: `kernels` ("torch" | "triton" | "auto", set by GPT2LMHead.set_kernels) and
    whether the fused path runs for a tensor on a given device."""

    kernels: str = "torch"

    def _fused(self, x: torch.Tensor) -> bool:
        return self.kernels != "torch" and resolve_kernels(self.kernels, x.device) == "triton"


class LayerNorm(_Kernels, nn.LayerNorm):
    """nn.LayerNorm (same parameters and keys) that runs gpu_kernels.layer_norm when fused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused(x):
            return layer_norm(x.contiguous(), self.weight, self.bias, self.eps)
        return super().forward(x)


class Attention(_Kernels, nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Projection(config.n_embd, 3 * config.n_embd)
        self.c_proj = Projection(config.n_embd, config.n_embd)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:  # (B, nh, T_past, hs) ++ (B, nh, T, hs)
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        T_all = k.shape[2]
        if self._fused(x):  # FlashAttention-2; query i sits at T_all - T + i
            y = flash_attention(q, k, v, causal=True, past_len=T_all - T)  # (B, nh, T, hs)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])  # (B, nh, T, T_all)
        # Query i sits at absolute position T_all - T + i and sees keys 0..that position.
        causal = torch.ones(T, T_all, dtype=torch.bool, device=x.device).tril(T_all - T)
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, nh * hs)
        return self.c_proj(y), (k, v)


class MLP(_Kernels, nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Projection(config.n_embd, config.inner_dim)
        self.c_proj = Projection(config.inner_dim, config.n_embd)
        self.approximate = "tanh" if ACTIVATIONS[config.activation_function] == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused(x):  # x @ W, then bias + GELU in one pass
            h = (x.reshape(-1, x.shape[-1]) @ self.c_fc.weight).view(*x.shape[:-1], -1)
            return self.c_proj(bias_gelu(h, self.c_fc.bias, self.approximate))
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class Block(nn.Module):
    """Pre-norm transformer block. `mlp` may be replaced (an MoE FFN, for instance)."""

    def __init__(self, config: GPT2Config, mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = mlp if mlp is not None else MLP(config)

    def forward(self, x, past):
        a, present = self.attn(self.ln_1(x), past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT2Model(nn.Module):
    def __init__(self, config: GPT2Config, blocks: Sequence[Block] | None = None) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(blocks if blocks is not None else
                               [Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        for emb in (self.wte, self.wpe):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, past: KVCache | None = None):
        T_past = 0 if past is None else past[0][0].shape[2]
        pos = torch.arange(T_past, T_past + input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)  # (B, T, C)
        present: KVCache = []
        ltd = getattr(self, "layer_token_drop", None)  # random-LTD hook: models.random_ltd
        for i, block in enumerate(self.h):
            if ltd is not None and self.training and past is None:
                x, kv = ltd(i, x, lambda h, b=block: b(h, None))
            else:
                x, kv = block(x, None if past is None else past[i])
            present.append(kv)
        return self.ln_f(x), present


class GPT2LMHead(nn.Module):
    """GPT-2 with its language-model head (HF: `GPT2LMHeadModel`)."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, transformer: GPT2Model | None = None, *,
                 kernels: str = "torch") -> None:
        super().__init__()
        self.config = config
        self.transformer = transformer if transformer is not None else GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.set_kernels(kernels)

    def set_kernels(self, kernels: str) -> None:
        """Choose the kernels: "torch", "triton" or "auto" (see the module docstring)."""
        resolve_kernels(kernels, "cpu")  # validates the name
        self.kernels = kernels
        for module in self.modules():
            if hasattr(module, "kernels"):  # the _Kernels modules and MoE layers
                module.kernels = kernels

    def forward(
        self, input_ids: torch.Tensor, past: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """input_ids (B, T) -> logits (B, T, vocab_size), present."""
        h, present = self.final_hidden(input_ids, past)
        return self.lm_head(h), present

    def final_hidden(
        self, input_ids: torch.Tensor, past: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """input_ids (B, T) -> the hidden states after ln_f (B, T, n_embd), present."""
        T_total = input_ids.shape[1] + (0 if past is None else past[0][0].shape[2])
        if T_total > self.config.n_positions:
            raise PromptError(
                f"sequence of {T_total} tokens exceeds n_positions={self.config.n_positions}"
            )
        return self.transformer(input_ids, past)

    def lm_loss(self, input_ids: torch.Tensor, targets: torch.Tensor,
                ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy of the next-token logits against targets (B, T), in FP32.

        The torch path is `F.cross_entropy(logits.float(), targets)`. The fused path feeds the
        final hidden states and the LM head's weight to `gpu_kernels.cross_entropy`, which
        never materialises the (B * T, vocab_size) logits.
        """
        h, _ = self.final_hidden(input_ids)  # (B, T, C)
        if self.kernels != "torch" and resolve_kernels(self.kernels, h.device) == "triton":
            return cross_entropy(h.reshape(-1, h.shape[-1]), self.lm_head.weight,
                                 targets.reshape(-1), ignore_index)
        logits = self.lm_head(h)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=ignore_index)

    # -- generation ---------------------------------------------------------------------------

    def check_prompt(self, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
        """Raise PromptError unless `prompt_ids` + `max_new_tokens` fits this model."""
        n_ctx, vocab = self.config.n_positions, self.config.vocab_size
        if len(prompt_ids) == 0:
            raise PromptError("the prompt is empty; give at least one token of prompt")
        if max_new_tokens < 1:
            raise PromptError(f"max-new-tokens must be at least 1, not {max_new_tokens}")
        if len(prompt_ids) + max_new_tokens > n_ctx:
            raise PromptError(
                f"prompt ({len(prompt_ids)} tokens) + max-new-tokens ({max_new_tokens}) exceeds "
                f"the model's context n_positions={n_ctx}; shorten the prompt or generate fewer"
            )
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise PromptError(
                f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1})"
            )

    @torch.no_grad()
    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> Iterator[int]:
        """Yield `max_new_tokens` generated ids one at a time, using the KV cache.

        temperature 0 is greedy; otherwise sampling from softmax(logits / temperature),
        restricted to the `top_k` most likely tokens when given, reproducible for a seed.
        """
        self.check_prompt(prompt_ids, max_new_tokens)
        device = self.lm_head.weight.device
        generator = torch.Generator(device="cpu")
        generator.manual_seed(0 if seed is None else seed)
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
        past = None
        for _ in range(max_new_tokens):
            logits, past = self(ids, past)
            token = sample_next(logits[0, -1], temperature, top_k, generator)
            yield token
            ids = torch.tensor([[token]], dtype=torch.long, device=device)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, **sampling) -> list[int]:
        """The generated ids (prompt excluded); see `stream` for the sampling options."""
        return list(self.stream(prompt_ids, max_new_tokens, **sampling))

    # -- checkpoints --------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> GPT2LMHead:
        """Load an HF-format directory: config.json + model.safetensors (or pytorch_model.bin)."""
        config = cls.config_class.from_dict(checkpoint.read_config(path))
        with torch.device("meta"):
            model = cls(config)
        checkpoint.load_weights(model, path, dtype=dtype, device=device)
        return model.eval()

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        checkpoint.save(self, path, self.config.to_dict(), dtype=dtype)
