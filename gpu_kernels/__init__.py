"""GPU kernels (Triton, optional) with torch fallbacks, each checked against a torch reference.

One op per module, each a private `@triton.jit` kernel behind a public function that validates
its inputs and runs the kernel where Triton can run (CUDA, or CPU under `TRITON_INTERPRET=1`)
and the op's torch reference elsewhere, so callers never branch:

- `flash_attention(q, k, v, causal=True, past_len=0, scale=None)`: FlashAttention-2 fwd + bwd
- `layer_norm(x, weight, bias, eps)`: fused LayerNorm fwd + bwd
- `bias_gelu(x, bias, approximate="tanh")`: fused bias + GELU fwd + bwd
- `cross_entropy(hidden, weight, targets, ignore_index=-100)`: LM head + loss, chunked over
  the vocabulary, fwd + bwd
- `permute(x, expert, E)` / `unpermute(y, order, weight)`: sort token copies by expert and
  back, combining with the gate weights (dropless MoE dispatch), fwd + bwd
- `grouped_gemm(x, w, group_sizes, bias=None)`: one matmul per variable-sized expert group,
  fwd + bwd

Where the kernels run: `triton_available(device)`; a `kernels=` option ("torch" | "triton" |
"auto") resolves with `resolve_kernels(kernels, device)`, and `kernels_notice` gives the one
line to show when "triton" falls back to torch.
"""

from ._dispatch import (
    HAVE_TRITON,
    INTERPRETER,
    KERNEL_MODES,
    kernels_notice,
    resolve_kernels,
    triton_available,
)
from .attention import attention_reference, flash_attention
from .gelu import bias_gelu, bias_gelu_reference
from .grouped_matmul import grouped_gemm, grouped_gemm_reference
from .layernorm import layer_norm, layer_norm_reference
from .lm_loss import cross_entropy, cross_entropy_reference
from .moe_dispatch import permute, permute_reference, unpermute, unpermute_reference

__all__ = [
    "HAVE_TRITON",
    "INTERPRETER",
    "KERNEL_MODES",
    "attention_reference",
    "bias_gelu",
    "bias_gelu_reference",
    "cross_entropy",
    "cross_entropy_reference",
    "flash_attention",
    "grouped_gemm",
    "grouped_gemm_reference",
    "kernels_notice",
    "layer_norm",
    "layer_norm_reference",
    "permute",
    "permute_reference",
    "resolve_kernels",
    "triton_available",
    "unpermute",
    "unpermute_reference",
]
