"""DTS-Gate: the dense-to-sparse gate of EvoMoE (Nie et al., 2021), on the Tandem router.

Training routes with a Gumbel-softmax whose temperature falls on a schedule, and activates
every expert whose weight clears a threshold, so the number of experts per token (the
dynamic k) starts at all of them and shrinks as the temperature drops and the router learns.
Inference routes with plain top-k of the fp32 logits, weights renormalised, nothing dropped.

The schedule, for optimiser step t and T = `anneal_steps`:

    tau(t) = tau_start * (tau_end / tau_start) ** (min(t, T) / T)

a geometric decay from `tau_start` (default 2.0) to `tau_end` (default 0.3), constant after.
In training, per token:

    g = softmax((logits + G) / tau(t)),   G ~ Gumbel(0, 1) per expert
    active = {e : g_e >= threshold / E}  U  {argmax_e g_e}
    weight_e = g_e / sum(g_active)  for e in active, else 0

`threshold` is a fraction of the uniform share 1/E (default 0.25): at a high temperature g is
close to uniform and every expert is active; as tau falls, g concentrates and the active set
shrinks towards one expert. Training is dropless, so each expert's buffer holds its whole
load (one integer read from the device per layer, see `gates.dropless_capacity`).
The trainer sets the step through `set_step`, so a resumed run gets the same temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ModelConfigError
from .gates import (
    Routing,
    assign_slots,
    check_gate_options,
    dropless_capacity,
    gumbel_noise,
    load_balancing_loss,
    one_hot,
    route,
    router_z_loss,
)
from .router import GateOutput, Router

__all__ = ["DTSGate", "DTSSchedule", "dts_gating"]


@dataclass(frozen=True)
class DTSSchedule:
    tau_start: float = 2.0  # Gumbel-softmax temperature at step 0
    tau_end: float = 0.3  # temperature from `anneal_steps` on
    anneal_steps: int = 1000  # steps of the geometric decay
    threshold: float = 0.25  # an expert is active when its weight >= threshold / E

    def __post_init__(self) -> None:
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise ModelConfigError(
                f"DTS temperatures must be > 0, not tau_start={self.tau_start} "
                f"tau_end={self.tau_end}")
        if not isinstance(self.anneal_steps, int) or self.anneal_steps < 1:
            raise ModelConfigError(
                f"DTS anneal_steps must be a positive integer, not {self.anneal_steps!r}")
        if not 0 < self.threshold <= 1:
            raise ModelConfigError(f"DTS threshold must be in (0, 1], not {self.threshold!r}")

    def temperature(self, step: int) -> float:
        progress = min(max(step, 0), self.anneal_steps) / self.anneal_steps
        return self.tau_start * math.exp(progress * math.log(self.tau_end / self.tau_start))


def dts_gating(logits: Tensor, temperature: float, threshold: float, *, ep_group=None,
               generator: torch.Generator | None = None) -> Routing:
    """Training-time DTS routing of logits (S, E): dynamic k, dropless, renormalised weights.

    The choices of a token are all E experts ordered by their Gumbel-softmax weight; `kept`
    marks the active ones (a prefix of that order).
    """
    E = logits.shape[1]
    logits = logits.float()
    g = F.softmax((logits + gumbel_noise(logits.shape, logits.device, generator)) / temperature,
                  dim=1)  # (S, E)
    g_sorted, expert = g.sort(dim=1, descending=True)  # (S, E) each; choice j = j-th best
    active = g_sorted >= threshold / E
    active[:, 0] = True  # every token keeps its best expert
    mask = one_hot(expert.t(), E) & active.t().unsqueeze(2)  # (K=E, S, E)
    exp_counts = mask.sum(dim=(0, 1)).detach()  # (E,)
    C = dropless_capacity(exp_counts, ep_group)
    slot, kept = assign_slots(mask, "choice")
    weight = g_sorted * kept
    weight = weight / weight.sum(dim=1, keepdim=True)  # the best expert is always kept
    gates = F.softmax(logits, dim=1)
    mean_k = kept.sum(dim=1).float().mean()
    l_aux = load_balancing_loss(gates, mask.sum(dim=0), mean_k)
    return Routing(expert=expert, weight=weight, slot=slot, kept=kept, capacity=C,
                   l_aux=l_aux, exp_counts=exp_counts)


class DTSGate(Router):
    """Dense-to-sparse gate: `dts_gating` in training, top-`k` renormalised at inference."""

    def __init__(self, model_dim: int, num_experts: int, k: int = 1,
                 schedule: DTSSchedule | None = None, ep_group=None) -> None:
        super().__init__(model_dim, num_experts)
        check_gate_options(num_experts, k, 1.0, 0)
        self.k = k
        self.schedule = schedule or DTSSchedule()
        self.ep_group = ep_group
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    @property
    def temperature(self) -> float:
        return self.schedule.temperature(self.step)

    def forward(self, x: Tensor, used_token: Tensor | None = None,
                generator: torch.Generator | None = None) -> GateOutput:
        if used_token is not None:
            raise ModelConfigError("the DTS gate does not take used_token; mask padding instead")
        logits = self.logits(x, generator)  # (S, E) fp32
        if self.training:
            routing = dts_gating(logits, self.temperature, self.schedule.threshold,
                                 ep_group=self.ep_group, generator=generator)
        else:
            routing = route(logits, self.k, 1.0, 0, drop_tokens=False, renormalize=True,
                            ep_group=self.ep_group)
        return GateOutput(routing=routing, z_loss=router_z_loss(logits))
