"""`TopKGate`: the learned router of an MoE layer, DeepSpeed's TopKGate in contract.

The router is one plain matrix `weight` (model_dim, num_experts), stored (in, out) like every
GPT-2 projection, with no bias; logits are computed in fp32 whatever the activations' dtype
(`x.float() @ weight.float()`), so routing decisions do not depend on fp16/bf16 rounding.

Training and inference route differently, as in DeepSpeed: noise ('Jitter', 'RSample'),
Random Token Selection and top-2 second-expert sampling act only in training; `eval_*`
options choose the inference capacity. For batch-1 decode on an accelerator the simple
setting is `renormalize=True, eval_drop_tokens=False`: top-k of the fp32 logits, weights
p_i / sum(p_topk), nothing dropped, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ModelConfigError
from .gates import Routing, check_gate_options, multiplicative_jitter, route, router_z_loss

__all__ = ["GateOutput", "Router", "TopKGate"]


@dataclass
class GateOutput:
    routing: Routing  # the decision, compact
    z_loss: Tensor  # () router z-loss of these logits (unweighted)


class Router(nn.Module):
    """A linear fp32 router: `weight` (model_dim, num_experts); subclasses decide the routing."""

    def __init__(self, model_dim: int, num_experts: int, noisy_gate_policy: str | None = None):
        super().__init__()
        check_gate_options(num_experts, 1, 1.0, 0, noisy_gate_policy)
        self.num_experts = num_experts
        self.noisy_gate_policy = noisy_gate_policy
        self.weight = nn.Parameter(torch.empty(model_dim, num_experts))
        nn.init.normal_(self.weight, std=0.02)

    def logits(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x (S, M) -> fp32 logits (S, E); 'Jitter' perturbs the input in training."""
        x = x.float()
        if self.noisy_gate_policy == "Jitter" and self.training:
            x = multiplicative_jitter(x, generator=generator)
        return x @ self.weight.float()


class TopKGate(Router):
    """Top-k gating on a learned router; forward(x (S, M)) -> GateOutput."""

    def __init__(
        self,
        model_dim: int,
        num_experts: int,
        k: int = 1,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float = 1.0,
        min_capacity: int = 8,
        noisy_gate_policy: str | None = None,
        drop_tokens: bool = True,
        use_rts: bool = True,
        ep_group=None,
        top2_2nd_expert_sampling: bool = True,
        *,
        drop_policy: str | None = None,
        eval_drop_tokens: bool | None = None,
        renormalize: bool | None = None,
    ) -> None:
        super().__init__(model_dim, num_experts, noisy_gate_policy)
        # DeepSpeed's defaults: top-k drops by probability, top-1/2 by position; top-1
        # weights are raw probabilities, top-2/k renormalised.
        drop_policy = drop_policy or ("probs" if k > 2 else "position")
        check_gate_options(num_experts, k, capacity_factor, min_capacity, noisy_gate_policy,
                           drop_policy)
        if not eval_capacity_factor > 0:
            raise ModelConfigError(
                f"eval_capacity_factor must be > 0, not {eval_capacity_factor!r}")
        self.k = k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.min_capacity = min_capacity
        self.drop_tokens = drop_tokens
        self.eval_drop_tokens = drop_tokens if eval_drop_tokens is None else eval_drop_tokens
        self.use_rts = use_rts
        self.drop_policy = drop_policy
        self.top2_2nd_expert_sampling = top2_2nd_expert_sampling
        self.renormalize = (k > 1) if renormalize is None else renormalize
        self.ep_group = ep_group
        # TA-MoE dispatch targets (E,) of this rank, or None for the uniform GShard loss.
        # Not persistent: they describe the machine, not the model.
        self.register_buffer("aux_targets", None, persistent=False)

    def set_dispatch_targets(self, targets: Tensor | None) -> None:
        """Use TA-MoE's topology-aware loss towards `targets` (E,), or None for uniform."""
        if targets is not None:
            targets = torch.as_tensor(targets, dtype=torch.float32)
            if targets.shape != (self.num_experts,) or not bool((targets > 0).all()):
                raise ModelConfigError(
                    f"dispatch targets must be {self.num_experts} positive shares, "
                    f"not shape {tuple(targets.shape)}")
            targets = (targets / targets.sum()).to(self.weight.device)
        self.aux_targets = targets

    def forward(self, x: Tensor, used_token: Tensor | None = None,
                generator: torch.Generator | None = None) -> GateOutput:
        logits = self.logits(x, generator)  # (S, E) fp32
        training = self.training
        if self.k == 1 and self.use_rts and training:
            priority = "random"
        else:
            priority = self.drop_policy
        routing = route(
            logits,
            self.k,
            self.capacity_factor if training else self.eval_capacity_factor,
            self.min_capacity,
            drop_tokens=self.drop_tokens if training else self.eval_drop_tokens,
            priority=priority,
            slot_order="token" if self.k > 2 else "choice",
            aux_choices="all" if self.k > 2 else "first",
            renormalize=self.renormalize,
            rsample=training and self.noisy_gate_policy == "RSample" and self.k == 1,
            sample_after_first=training and self.k == 2 and self.top2_2nd_expert_sampling,
            used_token=used_token,
            aux_targets=self.aux_targets,
            ep_group=self.ep_group,
            generator=generator,
        )
        return GateOutput(routing=routing, z_loss=router_z_loss(logits))
