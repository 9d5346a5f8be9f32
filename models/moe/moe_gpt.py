"""MoE-GPT: GPT-2 whose FFN is an MoE layer every `moe_every` blocks, in HF checkpoint layout.

`MoEGPTConfig` extends `GPT2Config` with `moe_*` fields (config.json `model_type: moe_gpt2`);
`MoEGPT` keeps `GPT2LMHead`'s contract, `forward(input_ids, past=None) -> (logits, present)`,
and its generation and checkpoint methods. The load-balancing and z-losses of the last forward
are on the model (`auxiliary_losses()`, `last_aux`), not in any global.

Checkpoint keys of an MoE block i (dense blocks are GPT-2's):

    transformer.h.{i}.mlp.gate.weight                   (n_embd, E)   the router, fp32 logits
    transformer.h.{i}.mlp.experts.{e}.c_fc.weight       (n_embd, inner)   as GPT-2's MLP
    transformer.h.{i}.mlp.experts.{e}.c_fc.bias / c_proj.weight / c_proj.bias
    transformer.h.{i}.mlp.residual_mlp.* , mlp.coefficient.*   (residual MoE only)

Inference routing (eval mode) with the defaults `moe_renormalize=True,
moe_eval_drop_tokens=False`: top-k of x @ gate.weight in fp32, weights p_i / sum(p_topk),
nothing dropped, no randomness: what an accelerator computes for batch-1 decode.

`moe_dropless: true` never drops a token, in training or inference, and runs the experts on
permute + grouped GEMMs instead of a capacity buffer (see `models.moe.layer`); it overrides
`moe_drop_tokens` / `moe_eval_drop_tokens`. `MoEGPT(config, kernels=...)` chooses the kernels
as `GPT2LMHead` does; the choice is not part of the checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import GPT2Config
from ..errors import ModelConfigError, PromptError
from ..gpt2 import MLP, Block, GPT2LMHead, GPT2Model, KVCache, Projection
from .dts import DTSGate, DTSSchedule
from .gates import DROP_POLICIES, NOISY_GATE_POLICIES
from .layer import MoE, MoEOutput

__all__ = ["MoEAux", "MoEGPT", "MoEGPTConfig"]

GATES = ("topk", "dts")


@dataclass
class MoEGPTConfig(GPT2Config):
    model_type: str = "moe_gpt2"
    moe_every: int = 2  # block i is MoE when (i + 1) % moe_every == 0: 2 -> blocks 1, 3, ...
    moe_num_experts: int | list[int] = 8  # per MoE block; a list (one per MoE block): PR-MoE
    moe_top_k: int = 1  # experts per token
    moe_gate: str = "topk"  # "topk" or "dts" (dense-to-sparse, see models.moe.dts)
    moe_capacity_factor: float = 1.0  # training capacity: ceil(k * cf * tokens / E)
    moe_eval_capacity_factor: float = 1.0  # inference capacity when moe_eval_drop_tokens
    moe_min_capacity: int = 4  # capacity floor
    moe_drop_tokens: bool = True  # training drops tokens over capacity
    moe_eval_drop_tokens: bool = False  # inference drops tokens over capacity
    moe_drop_policy: str = "position"  # over capacity, keep the earliest or the most probable
    moe_use_rts: bool = True  # top-1 training: Random Token Selection picks who is dropped
    moe_noisy_gate_policy: str | None = None  # None, "Jitter" or "RSample" (training only)
    moe_renormalize: bool = True  # top-k weights renormalised to sum to 1
    moe_top2_2nd_expert_sampling: bool = True  # top-2 training: sample the 2nd expert
    moe_use_residual: bool = False  # residual MoE: a dense MLP beside the experts
    moe_dropless: bool = False  # never drop; experts on permute + grouped GEMMs, no buffer
    moe_aux_loss_coef: float = 0.01  # weight of the load-balancing loss (summed over blocks)
    moe_z_loss_coef: float = 0.001  # weight of the router z-loss (summed over blocks)
    moe_dts_tau_start: float = 2.0  # DTS gate: temperature at step 0
    moe_dts_tau_end: float = 0.3  # DTS gate: temperature after the anneal
    moe_dts_anneal_steps: int = 1000  # DTS gate: steps of the geometric temperature decay
    moe_dts_threshold: float = 0.25  # DTS gate: active when weight >= threshold / E

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.moe_every, int) or self.moe_every < 1:
            raise ModelConfigError(f"moe_every must be a positive integer, not {self.moe_every!r}")
        layers = self.moe_layers
        if not layers:
            raise ModelConfigError(
                f"moe_every ({self.moe_every}) exceeds n_layer ({self.n_layer}): no block would "
                "be MoE; lower moe_every")
        counts = self.moe_num_experts
        if isinstance(counts, list):
            if len(counts) != len(layers):
                raise ModelConfigError(
                    f"moe_num_experts lists {len(counts)} counts but there are {len(layers)} MoE "
                    f"blocks ({layers}); give one count per MoE block")
        else:
            counts = [counts]
        for n in counts:
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ModelConfigError(f"moe_num_experts must be positive integers, not {n!r}")
        if not isinstance(self.moe_top_k, int) or self.moe_top_k < 1:
            raise ModelConfigError(f"moe_top_k must be a positive integer, not {self.moe_top_k!r}")
        if self.moe_top_k > min(counts):
            raise ModelConfigError(
                f"moe_top_k ({self.moe_top_k}) must not exceed num_experts ({min(counts)})")
        for name in ("moe_capacity_factor", "moe_eval_capacity_factor"):
            if not getattr(self, name) > 0:
                raise ModelConfigError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if not isinstance(self.moe_min_capacity, int) or self.moe_min_capacity < 0:
            raise ModelConfigError(
                f"moe_min_capacity must be an integer >= 0, not {self.moe_min_capacity!r}")
        if not isinstance(self.moe_dropless, bool):
            raise ModelConfigError(f"moe_dropless must be true or false, not {self.moe_dropless!r}")
        if self.moe_gate not in GATES:
            raise ModelConfigError(f"moe_gate must be one of {GATES}, not {self.moe_gate!r}")
        if self.moe_noisy_gate_policy not in NOISY_GATE_POLICIES:
            raise ModelConfigError(
                "moe_noisy_gate_policy must be null, 'Jitter' or 'RSample', not "
                f"{self.moe_noisy_gate_policy!r}")
        if self.moe_drop_policy not in DROP_POLICIES:
            raise ModelConfigError(
                f"moe_drop_policy must be one of {DROP_POLICIES}, not {self.moe_drop_policy!r}")
        for name in ("moe_aux_loss_coef", "moe_z_loss_coef"):
            if not getattr(self, name) >= 0:
                raise ModelConfigError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        self.dts_schedule()  # validates the DTS fields

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.n_layer) if (i + 1) % self.moe_every == 0]

    def experts_in(self, block: int) -> int:
        """Experts of MoE block `block` (an index into transformer.h)."""
        counts = self.moe_num_experts
        if isinstance(counts, list):
            return counts[self.moe_layers.index(block)]
        return counts

    def dts_schedule(self) -> DTSSchedule:
        return DTSSchedule(self.moe_dts_tau_start, self.moe_dts_tau_end,
                           self.moe_dts_anneal_steps, self.moe_dts_threshold)

    @classmethod
    def from_dense(cls, dense: GPT2Config, **moe: Any) -> MoEGPTConfig:
        """The dense config's fields plus the given `moe_*` fields."""
        base = {f.name: getattr(dense, f.name) for f in dataclasses.fields(GPT2Config)}
        base.pop("model_type")
        return cls(**base, **moe)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["architectures"] = ["MoEGPTLMHeadModel"]
        return out


@dataclass
class MoEAux:
    """What the MoE blocks of one forward reported, in block order."""

    l_aux: list[Tensor]  # () each: load-balancing loss (unweighted)
    z_loss: list[Tensor]  # () each: router z-loss (unweighted)
    exp_counts: list[Tensor]  # (E,) each: assignments per expert
    active_experts: list[Tensor]  # () each: mean experts per token that were dispatched
    dropped_fraction: list[Tensor]  # () each: share of the assignments dropped over capacity


def build_moe_ffn(config: MoEGPTConfig, block: int) -> MoE:
    E, k = config.experts_in(block), config.moe_top_k
    gate = None
    if config.moe_gate == "dts":
        gate = DTSGate(config.n_embd, E, k, config.dts_schedule())
    moe = MoE(
        config.n_embd, MLP(config), E, 1, k,
        config.moe_capacity_factor, config.moe_eval_capacity_factor, config.moe_min_capacity,
        config.moe_use_residual, config.moe_noisy_gate_policy, config.moe_drop_tokens,
        config.moe_use_rts,
        drop_policy=config.moe_drop_policy, eval_drop_tokens=config.moe_eval_drop_tokens,
        renormalize=config.moe_renormalize,
        top2_2nd_expert_sampling=config.moe_top2_2nd_expert_sampling, gate=gate,
        dropless=config.moe_dropless,
    )
    for expert in moe.experts:  # independent initialisations, not E copies of one
        for module in expert.modules():
            if isinstance(module, Projection):
                nn.init.normal_(module.weight, std=0.02)
    return moe


class MoEBlock(Block):
    """A pre-norm block whose `mlp` is an MoE layer; forward also returns its statistics."""

    def __init__(self, config: MoEGPTConfig, block: int) -> None:
        super().__init__(config, mlp=build_moe_ffn(config, block))

    def forward(self, x, past, generator=None):
        a, present = self.attn(self.ln_1(x), past)
        x = x + a
        moe: MoEOutput = self.mlp.forward_with_stats(self.ln_2(x), generator=generator)
        return x + moe.out, present, moe


class MoEGPTModel(GPT2Model):
    def __init__(self, config: MoEGPTConfig) -> None:
        moe = set(config.moe_layers)
        super().__init__(config, [MoEBlock(config, i) if i in moe else Block(config)
                                  for i in range(config.n_layer)])

    def forward(self, input_ids: Tensor, past: KVCache | None = None,
                generator: torch.Generator | None = None):
        T_past = 0 if past is None else past[0][0].shape[2]
        pos = torch.arange(T_past, T_past + input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)  # (B, T, C)
        present: KVCache = []
        stats: list[MoEOutput] = []
        ltd = getattr(self, "layer_token_drop", None)  # random-LTD hook: models.random_ltd
        for i, block in enumerate(self.h):
            layer_past = None if past is None else past[i]
            if ltd is not None and self.training and past is None:
                if isinstance(block, MoEBlock):
                    x, kv, moe = ltd(i, x, lambda h, b=block: b(h, None, generator))
                    stats.append(moe)
                else:
                    x, kv = ltd(i, x, lambda h, b=block: b(h, None))
            elif isinstance(block, MoEBlock):
                x, kv, moe = block(x, layer_past, generator)
                stats.append(moe)
            else:
                x, kv = block(x, layer_past)
            present.append(kv)
        return self.ln_f(x), present, stats


class MoEGPT(GPT2LMHead):
    """GPT-2 with MoE FFNs (HF-style checkpoint, model_type "moe_gpt2")."""

    config_class = MoEGPTConfig

    def __init__(self, config: MoEGPTConfig, *, kernels: str = "torch") -> None:
        super().__init__(config, MoEGPTModel(config), kernels=kernels)
        self.last_aux: MoEAux | None = None
        self._routing_seed: int | None = None
        self._generators: dict[torch.device, torch.Generator] = {}

    def __getstate__(self):
        # the last forward's losses (tensors inside an autograd graph) and the routing RNGs
        # are not part of the model: copies and pickles start without them
        state = self.__dict__.copy()
        state["last_aux"] = None
        state["_generators"] = {}
        return state

    # -- structure ----------------------------------------------------------------------------

    def moe_blocks(self) -> list[tuple[int, MoE]]:
        """(block index, MoE layer) of every MoE block."""
        return [(i, b.mlp) for i, b in enumerate(self.transformer.h) if isinstance(b, MoEBlock)]

    def shard_experts(self, ep_group) -> None:
        """Keep only this rank's experts in every MoE block (expert-parallel training; see
        models.moe.parallel). A sharded model cannot be saved as a checkpoint."""
        for _, moe in self.moe_blocks():
            moe.shard_experts(ep_group)

    def save_pretrained(self, path, dtype: torch.dtype | None = None) -> None:
        if any(moe.ep_size > 1 for _, moe in self.moe_blocks()):
            raise ModelConfigError(
                "this model holds only its rank's experts (ep_size > 1); save the full model "
                "it was sharded from, or gather the experts first")
        super().save_pretrained(path, dtype=dtype)

    def set_dispatch_targets(self, targets: Tensor | None) -> None:
        """TA-MoE: pull every MoE block's dispatch towards `targets` (E,) (None: uniform)."""
        for _, moe in self.moe_blocks():
            moe.gate.set_dispatch_targets(targets)

    # -- training hooks (the trainer calls these; see models.train.trainer) --------------------

    def begin_train_step(self, step: int, seed: int) -> None:
        """Make the routing randomness and the DTS temperature functions of (seed, step), so
        a resumed run routes exactly as an uninterrupted one."""
        self._routing_seed = seed * 1_000_003 + step + 7_919
        self._generators.clear()
        for _, moe in self.moe_blocks():
            if isinstance(moe.gate, DTSGate):
                moe.gate.set_step(step)

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self._routing_seed is None:
            return None  # the global RNG, as DeepSpeed
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(
                self._routing_seed)
        return self._generators[device]

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """The weighted auxiliary losses of the last forward, summed over MoE blocks."""
        if self.last_aux is None:
            return {}
        out = {}
        if self.config.moe_aux_loss_coef > 0:
            out["moe_aux_loss"] = self.config.moe_aux_loss_coef * torch.stack(
                self.last_aux.l_aux).sum()
        if self.config.moe_z_loss_coef > 0:
            out["moe_z_loss"] = self.config.moe_z_loss_coef * torch.stack(
                self.last_aux.z_loss).sum()
        return out

    def train_metrics(self) -> dict[str, float]:
        """Routing statistics of the last forward, averaged over MoE blocks (for logs)."""
        if self.last_aux is None:
            return {}
        aux = self.last_aux
        return {"moe_active_experts": torch.stack(aux.active_experts).mean().item(),
                "moe_dropped_fraction": torch.stack(aux.dropped_fraction).mean().item()}

    # -- forward ------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, past: KVCache | None = None
                ) -> tuple[Tensor, KVCache]:
        """input_ids (B, T) -> logits (B, T, vocab_size), present; see `last_aux`."""
        h, present = self.final_hidden(input_ids, past)
        return self.lm_head(h), present

    def final_hidden(self, input_ids: Tensor, past: KVCache | None = None
                     ) -> tuple[Tensor, KVCache]:
        """input_ids (B, T) -> hidden states after ln_f (B, T, n_embd), present; sets
        `last_aux`."""
        T_total = input_ids.shape[1] + (0 if past is None else past[0][0].shape[2])
        if T_total > self.config.n_positions:
            raise PromptError(
                f"sequence of {T_total} tokens exceeds n_positions={self.config.n_positions}")
        generator = self._generator(input_ids.device) if self.training else None
        h, present, stats = self.transformer(input_ids, past, generator)
        self.last_aux = MoEAux(
            l_aux=[s.l_aux for s in stats],
            z_loss=[s.z_loss for s in stats],
            exp_counts=[s.exp_counts for s in stats],
            active_experts=[s.routing.kept.sum(dim=1).float().mean().detach() for s in stats],
            dropped_fraction=[
                1 - s.routing.kept.sum().float() / s.exp_counts.sum().clamp(min=1) for s in stats],
        )
        return h, present
