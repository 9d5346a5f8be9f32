"""Expert parallelism on torch.distributed: groups, the all-to-all, and gradient averaging.

Layout (DeepSpeed's, without tensor parallelism): W data-parallel ranks are cut into
expert-parallel (EP) groups of `ep_size` consecutive ranks; each EP group holds every expert
once, E / ep_size per rank. Ranks that hold the same experts (the same position in their EP
groups) form an expert-data-parallel (EDP) group. For W = 4, ep_size = 2:

    EP groups  [0, 1] [2, 3]      rank r holds experts (r % 2) * E/2 ... (r % 2 + 1) * E/2 - 1
    EDP groups [0, 2] [1, 3]

Gradients. Each rank's loss is the mean over its own tokens, and the model's loss is the mean
of the W ranks' losses, so every gradient must be (1/W) * sum over ranks. A dense parameter
gets its rank's share locally: all-reduce over all W ranks, divide by W. An expert's
parameters get the shares of all ep_size ranks of its EP group through the backward
all-to-all, already summed; the all-reduce over its EDP group (W / ep_size ranks) sums the
rest, so the divisor is W as well, not the EDP group size. Dividing by the EDP size, as
DeepSpeed once did, inflates expert gradients ep_size-fold.

Which parameters are an expert's is told by a tag on the parameter itself, as MegaBlocks does
(`expert_model_parallel`): the MoE layer marks its experts' parameters when it is built
(`mark_expert_params`) and `split_parameters` reads the mark (`is_expert_param`), so this
module needs nothing of the layer's, which imports the all-to-all from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ModelConfigError

__all__ = [
    "ExpertParallelGroups",
    "all_to_all",
    "allreduce_gradients",
    "create_expert_parallel_groups",
    "expert_parallel_ranks",
    "is_expert_param",
    "mark_expert_params",
    "split_parameters",
]


def expert_parallel_ranks(world_size: int, ep_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """(EP groups, EDP groups) as lists of ranks, for `world_size` data-parallel ranks."""
    if not isinstance(ep_size, int) or ep_size < 1:
        raise ModelConfigError(f"ep_size must be a positive integer, not {ep_size!r}")
    if world_size % ep_size:
        raise ModelConfigError(
            f"the world size ({world_size}) must be divisible by ep_size ({ep_size}); "
            "launch a multiple of ep_size processes")
    ep_groups = [list(range(s, s + ep_size)) for s in range(0, world_size, ep_size)]
    edp_groups = [list(range(i, world_size, ep_size)) for i in range(ep_size)]
    return ep_groups, edp_groups


@dataclass
class ExpertParallelGroups:
    """This rank's process groups for one ep_size."""

    ep_size: int
    world_size: int  # data-parallel ranks: the divisor of every gradient
    ep_rank: int  # position of this rank in its EP group
    ep_group: object  # dist.ProcessGroup of the EP group holding this rank
    edp_group: object  # dist.ProcessGroup of the ranks that hold this rank's experts
    dp_group: object = None  # all data-parallel ranks (None: the default group)


def create_expert_parallel_groups(ep_size: int) -> ExpertParallelGroups:
    """Create the EP and EDP groups; every rank must call this with the same ep_size."""
    world, rank = dist.get_world_size(), dist.get_rank()
    ep_ranks, edp_ranks = expert_parallel_ranks(world, ep_size)
    mine = {}
    for kind, layout in (("ep", ep_ranks), ("edp", edp_ranks)):
        for ranks in layout:  # new_group is collective: every rank creates every group
            group = dist.new_group(ranks)
            if rank in ranks:
                mine[kind] = group
    return ExpertParallelGroups(ep_size=ep_size, world_size=world, ep_rank=rank % ep_size,
                                ep_group=mine["ep"], edp_group=mine["edp"])


class _AllToAll(torch.autograd.Function):
    """Equal-split all-to-all along dim 0; its own inverse, so also its own backward."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _AllToAll.apply(grad, ctx.group), None


def all_to_all(x: Tensor, group) -> Tensor:
    """x (P * n, ...) -> (P * n, ...): chunk p goes to rank p of `group`, chunk p of the
    result came from rank p. Differentiable."""
    return _AllToAll.apply(x, group)


#: The attribute that tags a parameter as an expert's (True); absent on dense parameters.
EXPERT_PARAM_ATTR = "moe_expert"


def mark_expert_params(experts: nn.Module) -> None:
    """Tag every parameter of `experts` as an expert's. The MoE layer calls it on its
    `experts` when it is built (and again after a deep copy, which drops parameter
    attributes)."""
    for p in experts.parameters():
        setattr(p, EXPERT_PARAM_ATTR, True)


def is_expert_param(p: nn.Parameter) -> bool:
    """Whether `p` belongs to an MoE layer's experts (see `mark_expert_params`)."""
    return getattr(p, EXPERT_PARAM_ATTR, False) is True


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, expert) parameters, expert ones those tagged by `mark_expert_params`."""
    dense, expert = [], []
    for p in model.parameters():
        (expert if is_expert_param(p) else dense).append(p)
    return dense, expert


def _parameters(params: list[nn.Parameter]) -> Iterator[Tensor]:
    return (p.grad for p in params if p.grad is not None)


def allreduce_gradients(model: nn.Module, groups: ExpertParallelGroups) -> None:
    """Average gradients over the data-parallel ranks, experts over their EDP group.

    Every gradient ends as the gradient of the mean of all ranks' losses (see the module
    docstring for why both divisors are the data-parallel world size).
    """
    dense, expert = split_parameters(model)
    for grad in _parameters(dense):
        dist.all_reduce(grad, group=groups.dp_group)
        grad.div_(groups.world_size)
    for grad in _parameters(expert):
        if groups.world_size // groups.ep_size > 1:
            dist.all_reduce(grad, group=groups.edp_group)
        grad.div_(groups.world_size)
