"""Mixture-of-Experts: DeepSpeed-MoE-class gates and layers, the DTS gate, TA-MoE's topology
model, expert parallelism on torch.distributed, MoE-GPT, upcycling, pruning, distillation.

One concept per module: `gates` (functional gating), `router` (the learned gate), `dts`,
`topology`, `layer` (`MoE`), `parallel`, `moe_gpt`, `upcycle`, `pruning`, `distill`.
"""

from .distill import kd_loss, kd_weight, mos_loss, student_from_teacher
from .dts import DTSGate, DTSSchedule, dts_gating
from .gates import (
    Routing,
    capacity,
    load_balancing_loss,
    route,
    router_z_loss,
    routing_tensors,
    top1gating,
    top2gating,
    topkgating,
)
from .layer import MoE, MoEOutput
from .moe_gpt import MoEAux, MoEGPT, MoEGPTConfig
from .parallel import (
    ExpertParallelGroups,
    all_to_all,
    allreduce_gradients,
    create_expert_parallel_groups,
    expert_parallel_ranks,
    is_expert_param,
    mark_expert_params,
    split_parameters,
)
from .pruning import expert_usage, prune_experts
from .router import GateOutput, TopKGate
from .topology import (
    Placement,
    Topology,
    dispatch_targets,
    expert_targets,
    place_experts,
    topology_aux_loss,
)
from .upcycle import upcycle, upcycle_checkpoint, upcycle_into

__all__ = [
    "DTSGate",
    "DTSSchedule",
    "ExpertParallelGroups",
    "GateOutput",
    "MoE",
    "MoEAux",
    "MoEGPT",
    "MoEGPTConfig",
    "MoEOutput",
    "Placement",
    "Routing",
    "TopKGate",
    "Topology",
    "all_to_all",
    "allreduce_gradients",
    "capacity",
    "create_expert_parallel_groups",
    "dispatch_targets",
    "dts_gating",
    "expert_parallel_ranks",
    "expert_targets",
    "expert_usage",
    "is_expert_param",
    "kd_loss",
    "kd_weight",
    "load_balancing_loss",
    "mark_expert_params",
    "mos_loss",
    "place_experts",
    "prune_experts",
    "route",
    "router_z_loss",
    "routing_tensors",
    "split_parameters",
    "student_from_teacher",
    "top1gating",
    "top2gating",
    "topkgating",
    "topology_aux_loss",
    "upcycle",
    "upcycle_checkpoint",
    "upcycle_into",
]
