"""Functional MoE gating with DeepSpeed-MoE's contract, so results compare one to one.

`top1gating`, `top2gating` and `topkgating` take router logits (S tokens, E experts) and
return `(l_aux, combine_weights, dispatch_mask, exp_counts)`: the load-balancing loss, the
(S, E, C) combine weights and boolean dispatch mask of GShard's einsum formulation, and the
assignments each expert received before any dropping.

All three are thin views of `route`, which returns the same decision in compact form
(`Routing`: per token and choice the expert, its buffer slot and weight) that the MoE layer
dispatches with; `routing_tensors` turns it into the dense (S, E, C) tensors.

Semantics, as in DeepSpeed unless noted:
- capacity C = ceil(k * capacity_factor * S / E), never below `min_capacity`. The quotient is
  rounded to 9 decimals before the ceiling, so 1.2 * 10 / 4 gives 3, not 4 (float32 in
  DeepSpeed can give 4 there).
- top-1: priority for a full expert is random (Random Token Selection, `use_rts`) or by
  position/probability; weights are the raw gate probabilities. With `renormalize` the weight
  is p / stopgrad(p): 1 in value, and the router still gets p's gradient.
- top-2: the second expert is drawn with Gumbel noise when `top2_2nd_expert_sampling`; every
  first choice is placed before any second choice; weights renormalise over the kept choices.
- top-k: slots in token order; dropping by probability (default) or position; weights
  renormalise over the kept choices.
- dropless (`drop_tokens=False`): C is the largest expert load (all-reduced with MAX over
  `ep_group`). That value sizes a buffer, so this one mode reads one integer from the device;
  every capacity mode is computed from shapes alone and never synchronises with the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..errors import ModelConfigError
from .topology import topology_aux_loss

__all__ = [
    "DROP_POLICIES",
    "NOISY_GATE_POLICIES",
    "Routing",
    "assign_slots",
    "capacity",
    "check_gate_options",
    "dropless_capacity",
    "gumbel_noise",
    "load_balancing_loss",
    "multiplicative_jitter",
    "one_hot",
    "route",
    "router_z_loss",
    "routing_tensors",
    "top1gating",
    "top2gating",
    "topkgating",
]

#: Noise on the router in training: none, multiplicative jitter of its input, Gumbel on logits.
NOISY_GATE_POLICIES = (None, "Jitter", "RSample")
#: Which assignments a full expert keeps: the earliest tokens, or the most probable.
DROP_POLICIES = ("position", "probs")


@dataclass
class Routing:
    """One gating decision for S tokens, K choices per token, E experts of C slots each."""

    expert: Tensor  # (S, K) int64: the expert of each choice
    weight: Tensor  # (S, K) float32: combine weight; 0 where the choice was dropped
    slot: Tensor  # (S, K) int64: row in that expert's buffer; 0 where dropped
    kept: Tensor  # (S, K) bool: the choice was dispatched
    capacity: int  # C: buffer rows per expert
    l_aux: Tensor  # () load-balancing loss (unweighted)
    exp_counts: Tensor  # (E,) int64: assignments per expert before dropping

    @property
    def num_experts(self) -> int:
        return self.exp_counts.shape[0]


# -- checks and small pieces ------------------------------------------------------------------


def check_gate_options(num_experts: int, k: int, capacity_factor: float, min_capacity: int,
                       noisy_gate_policy: str | None = None,
                       drop_policy: str = "position") -> None:
    """Raise ModelConfigError for options no gate can honour."""
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ModelConfigError(f"num_experts must be a positive integer, not {num_experts!r}")
    if not isinstance(k, int) or k < 1:
        raise ModelConfigError(f"k must be a positive integer, not {k!r}")
    if k > num_experts:
        raise ModelConfigError(
            f"k ({k}) must not exceed num_experts ({num_experts}); lower k or add experts")
    if not capacity_factor > 0:
        raise ModelConfigError(f"capacity_factor must be > 0, not {capacity_factor!r}")
    if not isinstance(min_capacity, int) or min_capacity < 0:
        raise ModelConfigError(f"min_capacity must be an integer >= 0, not {min_capacity!r}")
    if noisy_gate_policy not in NOISY_GATE_POLICIES:
        raise ModelConfigError(
            "noisy_gate_policy must be one of None, 'Jitter', 'RSample', not "
            f"{noisy_gate_policy!r}")
    if drop_policy not in DROP_POLICIES:
        raise ModelConfigError(
            f"drop_policy must be 'position' or 'probs', not {drop_policy!r}")


def capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float,
             min_capacity: int) -> int:
    """Buffer rows per expert: ceil(k * capacity_factor * S / E), at least `min_capacity`."""
    if not capacity_factor > 0:
        raise ModelConfigError(f"capacity_factor must be > 0, not {capacity_factor!r}")
    exact = round(k * capacity_factor * num_tokens / num_experts, 9)
    return max(math.ceil(exact), min_capacity)


def _uniform(shape, device, generator: torch.Generator | None, low=0.0, high=1.0) -> Tensor:
    u = torch.rand(shape, device=device, generator=generator)
    return low + (high - low) * u


def gumbel_noise(shape, device, generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel samples, -log(-log(U)), with U kept away from 0 and 1."""
    tiny = torch.finfo(torch.float32).tiny
    u = _uniform(shape, device, generator).clamp(tiny, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def multiplicative_jitter(x: Tensor, epsilon: float = 1e-2,
                          generator: torch.Generator | None = None) -> Tensor:
    """x times U(1 - epsilon, 1 + epsilon), elementwise (Switch Transformer's input jitter)."""
    if epsilon == 0:
        return x
    return x * _uniform(x.shape, x.device, generator, 1.0 - epsilon, 1.0 + epsilon).to(x.dtype)


def load_balancing_loss(gates: Tensor, assigned: Tensor, k: float | Tensor = 1) -> Tensor:
    """GShard/Switch loss: E / k * sum_e mean_prob_e * assigned_fraction_e.

    gates (S, E) softmax probabilities; assigned (S, E) 0/1 (or counts) of the assignments
    that count, k of them per token. The loss is 1 when the probabilities and the assignments
    are both uniform, and E when every token goes to one expert with probability 1.
    """
    num_experts = gates.shape[1]
    me = gates.mean(dim=0)  # (E,)
    ce = assigned.float().mean(dim=0)  # (E,)
    return num_experts * torch.sum(me * ce) / k


def one_hot(index: Tensor, num_classes: int) -> Tensor:
    """Boolean one-hot (..., num_classes). Unlike F.one_hot it never checks the indices on
    the host, so it does not synchronise a CUDA stream."""
    return index.unsqueeze(-1) == torch.arange(num_classes, device=index.device)


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's router z-loss: mean over tokens of logsumexp(logits)^2. logits (S, E)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def dropless_capacity(exp_counts: Tensor, ep_group=None) -> int:
    """The largest expert load, agreed over `ep_group`: the buffer size that drops nothing."""
    load = exp_counts.max().clone()
    if ep_group is not None and dist.get_world_size(group=ep_group) > 1:
        dist.all_reduce(load, op=dist.ReduceOp.MAX, group=ep_group)
    return max(int(load.item()), 1)  # the one host read of the dropless modes


# -- the routing core -------------------------------------------------------------------------


def route(
    logits: Tensor,
    k: int,
    capacity_factor: float,
    min_capacity: int,
    *,
    drop_tokens: bool = True,
    priority: str = "position",
    slot_order: str = "choice",
    aux_choices: str = "all",
    renormalize: bool = False,
    rsample: bool = False,
    sample_after_first: bool = False,
    used_token: Tensor | None = None,
    aux_targets: Tensor | None = None,
    ep_group=None,
    generator: torch.Generator | None = None,
) -> Routing:
    """Route S tokens to k of E experts. logits (S, E), computed in fp32.

    priority: which assignments a full expert keeps: "position" (earliest in `slot_order`),
    "probs" (highest gate probability) or "random" (Random Token Selection).
    slot_order: "choice" places every first choice before any second choice (GShard top-2),
    "token" places a token's choices together, in token order (DeepSpeed top-k).
    aux_choices: "first" counts only first choices in the balance loss (DeepSpeed top-1/2).
    rsample: choose the top-1 expert on Gumbel-noised logits (DeepSpeed's 'RSample').
    sample_after_first: choose choices 2..k on Gumbel-noised logits (top-2 expert sampling).
    aux_targets: (E,) dispatch targets; the balance loss becomes TA-MoE's
    `topology_aux_loss`, which pulls the dispatch towards them instead of towards uniform.
    """
    S, E = logits.shape
    check_gate_options(E, k, capacity_factor, min_capacity)
    device = logits.device
    logits = logits.float()
    gates = F.softmax(logits, dim=1)  # (S, E)

    # -- choose k experts per token
    if rsample or sample_after_first:
        noisy = logits + gumbel_noise(logits.shape, device, generator)  # (S, E)
    if sample_after_first and k > 1:
        first = gates.argmax(dim=1, keepdim=True)  # (S, 1)
        rest = noisy.scatter(1, first, float("-inf")).topk(k - 1, dim=1).indices  # (S, k-1)
        expert = torch.cat([first, rest], dim=1)
    else:
        expert = (noisy if rsample else gates).topk(k, dim=1).indices  # (S, k)

    mask = one_hot(expert.t(), E)  # (K, S, E), choice-major
    if used_token is not None:
        mask = mask & used_token.bool().view(1, S, 1)
    exp_counts = mask.sum(dim=(0, 1)).detach()  # (E,)
    assigned, per_token = (mask[0], 1) if aux_choices == "first" else (mask.sum(dim=0), k)
    if aux_targets is None:
        l_aux = load_balancing_loss(gates, assigned, per_token)
    else:
        l_aux = topology_aux_loss(gates, assigned, aux_targets, per_token)

    # -- capacity and dropping
    if drop_tokens:
        C = capacity(S, E, k, capacity_factor, min_capacity)
        kept = _keep(mask, gates, C, priority, slot_order, generator)
    else:
        C = dropless_capacity(exp_counts, ep_group)
        kept = mask

    slot, kept_sk = assign_slots(kept, slot_order)

    # -- combine weights
    p = gates.gather(1, expert)  # (S, K)
    pk = p * kept_sk
    if renormalize and k == 1:
        weight = pk / p.detach()  # value 1 where kept, gradient of p / p
    elif renormalize:
        weight = pk / pk.sum(dim=1, keepdim=True).clamp(min=torch.finfo(pk.dtype).eps)
    else:
        weight = pk
    return Routing(expert=expert, weight=weight, slot=slot, kept=kept_sk, capacity=C,
                   l_aux=l_aux, exp_counts=exp_counts)


def assign_slots(kept: Tensor, slot_order: str = "choice") -> tuple[Tensor, Tensor]:
    """Buffer rows for the kept assignments kept (K, S, E), handed out in `slot_order`.

    Returns slot (S, K), each kept choice's rank among its expert's (0 where dropped), and
    kept (S, K).
    """
    ordered = _ordered(kept, slot_order)  # (K*S, E)
    rank = _unordered(torch.cumsum(ordered.long(), dim=0) - 1, kept.shape, slot_order)
    slot = (rank * kept).sum(dim=2).t()  # (S, K)
    return slot, kept.any(dim=2).t()


def _ordered(mask: Tensor, slot_order: str) -> Tensor:
    """(K, S, E) -> (K*S, E) rows in the order slots are handed out."""
    K, S, E = mask.shape
    if slot_order == "choice":
        return mask.reshape(K * S, E)
    return mask.transpose(0, 1).reshape(S * K, E)


def _unordered(flat: Tensor, shape, slot_order: str) -> Tensor:
    K, S, E = shape
    if slot_order == "choice":
        return flat.view(K, S, E)
    return flat.view(S, K, E).transpose(0, 1)


def _keep(mask: Tensor, gates: Tensor, C: int, priority: str, slot_order: str,
          generator: torch.Generator | None) -> Tensor:
    """The assignments (K, S, E) that fit in C slots per expert, chosen by `priority`."""
    K, S, E = mask.shape
    if priority == "position":
        ordered = _ordered(mask, slot_order)
        fits = torch.cumsum(ordered.long(), dim=0) <= C  # (K*S, E)
        return mask & _unordered(fits, mask.shape, slot_order)
    if priority == "probs":
        score = gates.unsqueeze(0).expand(K, S, E)
    elif priority == "random":
        score = _uniform((K, S, E), gates.device, generator)
    else:
        raise ModelConfigError(f"priority must be position, probs or random, not {priority!r}")
    score = torch.where(mask, score, torch.full_like(score, -1.0)).reshape(K * S, E)
    top = score.topk(min(C, K * S), dim=0).indices  # (min(C, K*S), E)
    fits = torch.zeros_like(score, dtype=torch.bool).scatter_(0, top, True)
    return mask & fits.view(K, S, E)


def routing_tensors(routing: Routing) -> tuple[Tensor, Tensor]:
    """The dense GShard view: combine_weights (S, E, C) float and dispatch_mask (S, E, C) bool."""
    S = routing.expert.shape[0]
    E, C = routing.num_experts, routing.capacity
    index = routing.expert * C + routing.slot  # (S, K) into the flattened (E*C) axis
    combine = routing.weight.new_zeros(S, E * C).scatter_add(1, index, routing.weight)
    # a dropped choice points at slot 0 of its expert and adds nothing there
    dispatch = torch.zeros(S, E * C, dtype=torch.int32, device=index.device).scatter_add(
        1, index, routing.kept.to(torch.int32)).bool()
    return combine.view(S, E, C), dispatch.view(S, E, C)


# -- DeepSpeed's functional gates -------------------------------------------------------------


def top1gating(
    logits: Tensor,
    capacity_factor: float,
    min_capacity: int,
    used_token: Tensor | None = None,
    noisy_gate_policy: str | None = None,
    drop_tokens: bool = True,
    use_rts: bool = True,
    ep_group=None,
    *,
    drop_policy: str = "position",
    renormalize: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-1 gating: (l_aux, combine_weights (S,E,C), dispatch_mask (S,E,C), exp_counts (E,))."""
    check_gate_options(logits.shape[1], 1, capacity_factor, min_capacity, noisy_gate_policy,
                       drop_policy)
    r = route(logits, 1, capacity_factor, min_capacity, drop_tokens=drop_tokens,
              priority="random" if use_rts else drop_policy, slot_order="choice",
              aux_choices="first", renormalize=renormalize,
              rsample=noisy_gate_policy == "RSample", used_token=used_token,
              ep_group=ep_group, generator=generator)
    combine, dispatch = routing_tensors(r)
    return r.l_aux, combine, dispatch, r.exp_counts


def top2gating(
    logits: Tensor,
    capacity_factor: float,
    min_capacity: int,
    drop_tokens: bool = True,
    ep_group=None,
    top2_2nd_expert_sampling: bool = True,
    *,
    drop_policy: str = "position",
    renormalize: bool = True,
    used_token: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-2 gating (GShard): (l_aux, combine_weights, dispatch_mask, exp_counts)."""
    check_gate_options(logits.shape[1], 2, capacity_factor, min_capacity, None, drop_policy)
    r = route(logits, 2, capacity_factor, min_capacity, drop_tokens=drop_tokens,
              priority=drop_policy, slot_order="choice", aux_choices="first",
              renormalize=renormalize, sample_after_first=top2_2nd_expert_sampling,
              used_token=used_token, ep_group=ep_group, generator=generator)
    combine, dispatch = routing_tensors(r)
    return r.l_aux, combine, dispatch, r.exp_counts


def topkgating(
    logits: Tensor,
    k: int,
    capacity_factor: float,
    min_capacity: int,
    drop_tokens: bool = True,
    ep_group=None,
    drop_policy: str = "probs",
    *,
    renormalize: bool = True,
    used_token: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k gating: (l_aux, combine_weights, dispatch_mask, exp_counts)."""
    check_gate_options(logits.shape[1], k, capacity_factor, min_capacity, None, drop_policy)
    r = route(logits, k, capacity_factor, min_capacity, drop_tokens=drop_tokens,
              priority=drop_policy, slot_order="token", aux_choices="all",
              renormalize=renormalize, used_token=used_token, ep_group=ep_group,
              generator=generator)
    combine, dispatch = routing_tensors(r)
    return r.l_aux, combine, dispatch, r.exp_counts
