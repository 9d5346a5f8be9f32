"""`MoE`: a DeepSpeed-MoE-class layer: gate, experts, dispatch and combine, optional residual.

`MoE(hidden_size, expert, num_experts, ep_size=1, k=1, ...)` copies `expert` (any module
mapping (..., M) -> (..., M)) once per local expert; `forward(x) -> (out, l_aux, exp_counts)`
as DeepSpeed's. `forward_with_stats` also returns the router z-loss and the routing.

Dispatch is index based: each kept (token, choice) is added into row `expert * C + slot` of an
(E * C, M) buffer, every expert runs on its C rows, and each token gathers its rows back
weighted by the combine weights. It is the same arithmetic as GShard's einsums over the
(S, E, C) tensors (`gates.routing_tensors`) without materialising them, and it never reads
a value back to the host (capacity comes from shapes; see `gates` for the dropless mode).

With ep_size > 1 the layer holds E / ep_size experts (`experts.j` is global expert
ep_rank * E / ep_size + j) and exchanges the buffer with an all-to-all over its EP group.

Dropless mode (`dropless=True`, MegaBlocks' idea without its block-sparse matrices): the gate
never drops a token, and the experts (GPT-2 MLPs) run without any capacity buffer: `permute`
sorts the routed token copies by expert, two `grouped_gemm`s with a bias + GELU between them
run every expert on exactly its rows, and `unpermute` puts the rows back, weighted by the gate.
With `kernels` "triton" (or "auto" on CUDA) those are the fused `gpu_kernels`; with "torch"
their torch references (a loop over experts). Expert parallelism (ep_size > 1) keeps the buffer.

Residual MoE (DeepSpeed-MoE, PR-MoE): with `use_residual` a dense copy of the expert runs on
every token beside the MoE and a learned softmax coefficient mixes the two per token:
out = c0 * moe(x) + c1 * mlp(x), [c0, c1] = softmax(x @ coefficient).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from gpu_kernels import (
    bias_gelu,
    grouped_gemm,
    grouped_gemm_reference,
    permute,
    permute_reference,
    resolve_kernels,
    unpermute,
    unpermute_reference,
)

from ..errors import ModelConfigError
from ..gpt2 import MLP, Projection
from .gates import Routing
from .parallel import all_to_all, mark_expert_params
from .router import Router, TopKGate

__all__ = ["MoE", "MoEOutput"]


@dataclass
class MoEOutput:
    out: Tensor  # same shape as the input
    l_aux: Tensor  # () load-balancing loss (unweighted)
    z_loss: Tensor  # () router z-loss (unweighted)
    exp_counts: Tensor  # (E,) assignments per expert before dropping
    routing: Routing  # the full decision, for statistics and pruning


class MoE(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        expert: nn.Module,
        num_experts: int = 1,
        ep_size: int = 1,
        k: int = 1,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float = 1.0,
        min_capacity: int = 4,
        use_residual: bool = False,
        noisy_gate_policy: str | None = None,
        drop_tokens: bool = True,
        use_rts: bool = True,
        *,
        drop_policy: str | None = None,
        eval_drop_tokens: bool | None = None,
        renormalize: bool | None = None,
        top2_2nd_expert_sampling: bool = True,
        gate: Router | None = None,
        ep_group=None,
        dropless: bool = False,
        kernels: str = "torch",
    ) -> None:
        super().__init__()
        if dropless:
            if ep_size != 1:
                raise ModelConfigError(
                    f"dropless MoE runs on one expert-parallel rank; ep_size is {ep_size}")
            if not isinstance(expert, MLP):
                raise ModelConfigError(
                    "dropless MoE needs GPT-2 MLP experts (c_fc, GELU, c_proj), not "
                    f"{type(expert).__name__}")
            drop_tokens, eval_drop_tokens = False, False
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ModelConfigError(f"num_experts must be a positive integer, not {num_experts!r}")
        if not isinstance(ep_size, int) or ep_size < 1:
            raise ModelConfigError(f"ep_size must be a positive integer, not {ep_size!r}")
        if num_experts % ep_size:
            raise ModelConfigError(
                f"num_experts ({num_experts}) must be divisible by ep_size ({ep_size})")
        if gate is None:
            gate = TopKGate(hidden_size, num_experts, k, capacity_factor, eval_capacity_factor,
                            min_capacity, noisy_gate_policy, drop_tokens, use_rts, ep_group,
                            top2_2nd_expert_sampling, drop_policy=drop_policy,
                            eval_drop_tokens=eval_drop_tokens, renormalize=renormalize)
        elif gate.num_experts != num_experts:
            raise ModelConfigError(
                f"the gate routes to {gate.num_experts} experts but num_experts is {num_experts}")
        self.hidden_size = hidden_size
        self.num_experts = num_experts
        self.ep_size = ep_size
        self.num_local_experts = num_experts // ep_size
        self.gate = gate
        self.experts = nn.ModuleList(copy.deepcopy(expert) for _ in range(self.num_local_experts))
        # expert gradients average over the expert-data-parallel group (`parallel`)
        mark_expert_params(self.experts)
        self.dropless = dropless
        self.kernels = kernels
        resolve_kernels(kernels, "cpu")  # validates the name
        self.use_residual = use_residual
        if use_residual:
            self.residual_mlp = copy.deepcopy(expert)
            self.coefficient = Projection(hidden_size, 2)
        self.ep_group = None
        self.ep_rank = 0
        if ep_group is not None:
            self.set_expert_parallel_group(ep_group)

    def __setstate__(self, state: dict) -> None:
        # copy.deepcopy (and unpickling) come through here; a deep-copied nn.Parameter loses
        # its attributes, so the copy's experts are tagged again
        super().__setstate__(state)
        mark_expert_params(self.experts)

    @property
    def k(self) -> int:
        return self.gate.k

    def set_expert_parallel_group(self, ep_group) -> None:
        size = dist.get_world_size(group=ep_group)
        if size != self.ep_size:
            raise ModelConfigError(
                f"the expert-parallel group has {size} ranks but ep_size is {self.ep_size}")
        self.ep_group = ep_group
        self.ep_rank = dist.get_rank(group=ep_group)
        self.gate.ep_group = ep_group

    def shard_experts(self, ep_group) -> None:
        """Turn a layer that holds all experts into this rank's expert-parallel shard: keep
        the experts of this rank's position in `ep_group`, drop the rest."""
        if self.ep_size != 1:
            raise ModelConfigError("shard_experts needs a layer that holds all experts (ep_size 1)")
        if self.dropless:
            raise ModelConfigError("a dropless MoE layer cannot be sharded over experts")
        size = dist.get_world_size(group=ep_group)
        if self.num_experts % size:
            raise ModelConfigError(
                f"num_experts ({self.num_experts}) must be divisible by ep_size ({size})")
        self.ep_size = size
        self.num_local_experts = self.num_experts // size
        self.set_expert_parallel_group(ep_group)
        keep = self.local_expert_ids
        self.experts = nn.ModuleList(self.experts[e] for e in keep)

    @property
    def local_expert_ids(self) -> list[int]:
        """Global ids of the experts this rank holds, in the order of `experts`."""
        first = self.ep_rank * self.num_local_experts
        return list(range(first, first + self.num_local_experts))

    def forward(self, hidden_states: Tensor, used_token: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """hidden_states (..., M) -> (out (..., M), l_aux (), exp_counts (E,))."""
        r = self.forward_with_stats(hidden_states, used_token, generator)
        return r.out, r.l_aux, r.exp_counts

    def forward_with_stats(self, hidden_states: Tensor, used_token: Tensor | None = None,
                           generator: torch.Generator | None = None) -> MoEOutput:
        M = hidden_states.shape[-1]
        x = hidden_states.reshape(-1, M)  # (S, M)
        if used_token is not None:
            used_token = used_token.reshape(-1)
        gate_out = self.gate(x, used_token, generator)
        r = gate_out.routing
        if self.dropless:
            out = self._grouped_experts(x, r)
        else:
            out = self._buffered_experts(x, r)
        if self.use_residual:
            coef = self.coefficient(x).float().softmax(dim=-1).to(x.dtype)  # (S, 2)
            out = out * coef[:, 0:1] + self.residual_mlp(x) * coef[:, 1:2]
        return MoEOutput(out=out.view(hidden_states.shape), l_aux=r.l_aux,
                         z_loss=gate_out.z_loss, exp_counts=r.exp_counts, routing=r)

    def _buffered_experts(self, x: Tensor, r: Routing) -> Tensor:
        """x (S, M) -> combined expert outputs (S, M) through the (E * C, M) capacity buffer."""
        S, K = r.expert.shape
        M = x.shape[1]
        E, C = self.num_experts, r.capacity

        trash = E * C  # dropped choices go to (and gather zeros from) one extra row
        row = torch.where(r.kept, r.expert * C + r.slot, torch.full_like(r.slot, trash))  # (S, K)
        row = row.reshape(S * K)
        tokens = x.unsqueeze(1).expand(S, K, M).reshape(S * K, M)
        buffer = x.new_zeros(E * C + 1, M).index_add(0, row, tokens)[:trash]  # (E*C, M)
        y = self._run_experts(buffer.view(E, C, M))  # (E, C, M)
        y = torch.cat([y.reshape(E * C, M), y.new_zeros(1, M)])  # (E*C + 1, M)
        picked = y.index_select(0, row).view(S, K, M)
        return (picked * r.weight.to(picked.dtype).unsqueeze(2)).sum(dim=1)  # (S, M)

    def _grouped_experts(self, x: Tensor, r: Routing) -> Tensor:
        """x (S, M) -> combined expert outputs (S, M), dropless: permute, grouped GEMMs with
        bias + GELU between them, unpermute weighted by the gate. Nothing is padded."""
        fused = self.kernels != "torch" and resolve_kernels(self.kernels, x.device) == "triton"
        expert = torch.where(r.kept, r.expert, -1)  # (S, K); -1: not routed (masked tokens)
        w1 = torch.stack([e.c_fc.weight for e in self.experts])  # (E, M, I)
        b1 = torch.stack([e.c_fc.bias for e in self.experts])  # (E, I)
        w2 = torch.stack([e.c_proj.weight for e in self.experts])  # (E, I, M)
        b2 = torch.stack([e.c_proj.bias for e in self.experts])  # (E, M)
        approximate = self.experts[0].approximate
        weight = r.weight.to(x.dtype)  # (S, K)
        if fused:
            xs, sizes, order = permute(x.contiguous(), expert, self.num_experts)  # (R, M)
            h = bias_gelu(grouped_gemm(xs, w1, sizes, b1), None, approximate)  # bias in the GEMM
            y = grouped_gemm(h, w2, sizes, b2)  # (R, M)
            return unpermute(y, order, weight)
        xs, sizes, order = permute_reference(x, expert, self.num_experts)
        h = F.gelu(grouped_gemm_reference(xs, w1, sizes, b1), approximate=approximate)
        return unpermute_reference(grouped_gemm_reference(h, w2, sizes, b2), order, weight)

    def _run_experts(self, buffer: Tensor) -> Tensor:
        """buffer (E, C, M): rows for every global expert -> their outputs (E, C, M)."""
        E, C, M = buffer.shape
        if self.ep_size == 1:
            return torch.stack([expert(buffer[e]) for e, expert in enumerate(self.experts)])
        if self.ep_group is None:
            raise ModelConfigError(
                "ep_size > 1 needs an expert-parallel group; pass ep_group= or call "
                "set_expert_parallel_group()")
        P, L = self.ep_size, self.num_local_experts
        received = all_to_all(buffer.reshape(E * C, M), self.ep_group).view(P, L, C, M)
        outs = [expert(received[:, j].reshape(P * C, M)).view(P, C, M)
                for j, expert in enumerate(self.experts)]
        y = torch.stack(outs, dim=1)  # (P, L, C, M): rows of rank p for my expert j
        return all_to_all(y.reshape(E * C, M), self.ep_group).view(E, C, M)
