"""How the MoE blocks of an MoE-GPT map onto D devices: expert parallelism.

Attention stays tensor-parallel (as `plan` describes); an MoE block's FFN is split by
*experts*: each expert lives whole on one device, chosen by `models.moe.topology.place_experts`
on the ring's cost model (`Topology.ring` from the config's link figures), with the expert's
weight streaming time as its compute cost, so that busy experts spread over the ring.

On every device, per MoE block:
- the router matrix (E x hidden_padded) is replicated; the device computes the router logits,
  the top-1 (ARGMAX) and for top-2 the second choice (ARGMAX after masking the first), and the
  combine weights (exp of logit - max, renormalised over the k chosen, or over all E);
- a table in channel 0's scalar area maps (layer, expert) -> the local slot of that expert or
  -1; an expert that is local is run from `experts + slot * expert_stride`, an address
  computed in a register at run time;
- each device writes the weighted sum of its local experts' outputs (or zeros) into its own
  slot of a D x hidden_padded buffer; after an ALLGATHER every device sums the D slots in
  device order. Adding zeros is exact and FP16 addition commutes, so the result is
  bit-identical for every device count and placement.

Dense and MoE blocks share one layer layout up to the attention projection (LayerNorm and bias
vector, QKV, projection); the rest of a layer's region holds either the dense MLP or the
router and the expert slots, and the layer stride is the larger of the two. A second
scalar-area table holds each layer's kind, which the program reads at the start of a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hw.config import AccelConfig
from hw.intmath import ceil_div, round_up

from .errors import CompileError
from .region import Region

__all__ = ["MoEPlan", "measure_expert_loads", "plan_moe", "scalar_tables"]


@dataclass
class MoEPlan:
    """Where the experts of every MoE block live, and the layouts their programs use."""

    experts: int
    """E, experts per MoE block."""
    top_k: int
    """Experts per token (1 or 2)."""
    renormalize: bool
    """The combine weights are renormalised over the chosen experts (else the router's
    softmax over all E)."""
    layers: list[int]
    """Indices of the MoE blocks."""
    expert_hidden: int
    """An expert's hidden width (the dense MLP's, n_inner)."""
    expert_hidden_padded: int
    """`expert_hidden` rounded up to whole beats: the rows of an expert's up projection."""
    ldb_expert_hidden: int
    """Beats per row of an expert's down projection (rows are expert hidden vectors)."""
    router_padded: int
    """Router logits per token, rounded up to whole beats: the stride between tokens' logits."""
    slots_per_device: int
    """Expert slots per device in each MoE block, ceil(E / devices)."""
    expert_device: dict[int, list[int]] = field(default_factory=dict)
    """layer -> the device of each expert."""
    expert_slot: dict[int, list[int]] = field(default_factory=dict)
    """layer -> each expert's slot on its device."""
    placement_step_us: dict[int, float] = field(default_factory=dict)
    """layer -> the ring cost model's step time for the chosen placement."""
    expert_loads: dict[int, list[float]] = field(default_factory=dict)
    """layer -> the tokens per expert the placement used."""
    expert_regions: dict[str, Region] = field(default_factory=dict)
    """Offsets inside one expert slot (biases, up and down projections)."""
    expert_stride: int = 0
    """Bytes per channel of one expert slot."""
    kind_table: int = 0
    """Scalar-area byte offset of the layer kinds: an int32 per layer, 1 for MoE blocks."""
    slot_table: int = 0
    """Scalar-area byte offset of the local slots: an int32 per (layer, expert), -1 where
    another device holds the expert."""

    def local_experts(self, layer: int, device: int) -> list[int]:
        """Experts of `layer` held by `device`, in slot order."""
        owners = self.expert_device[layer]
        return sorted((e for e in range(self.experts) if owners[e] == device),
                      key=lambda e: self.expert_slot[layer][e])

    def summary(self) -> dict:
        return {
            "experts": self.experts, "top_k": self.top_k, "renormalize": self.renormalize,
            "layers": self.layers, "expert_hidden": self.expert_hidden,
            "expert_hidden_padded": self.expert_hidden_padded,
            "slots_per_device": self.slots_per_device, "expert_stride": self.expert_stride,
            "kind_table": self.kind_table, "slot_table": self.slot_table,
            "placement": {str(layer): {"expert_device": self.expert_device[layer],
                                       "expert_slot": self.expert_slot[layer],
                                       "expert_loads": self.expert_loads[layer],
                                       "modelled_step_us": self.placement_step_us[layer]}
                          for layer in self.layers},
        }


def measure_expert_loads(model, token_ids) -> dict[int, list[float]]:
    """{block: assignments per expert} of the golden MoE-GPT's router over `token_ids`, the
    `expert_loads` for `compile_model` that place experts by the traffic they will see."""
    import torch

    model.eval()
    with torch.no_grad():
        model(torch.as_tensor([list(token_ids)]))
    blocks = [block for block, _ in model.moe_blocks()]
    return {block: [float(c) for c in counts.tolist()]
            for block, counts in zip(blocks, model.last_aux.exp_counts, strict=True)}


def plan_moe(shape, config: AccelConfig, expert_loads: dict | None = None) -> MoEPlan:
    """Place every MoE block's experts on the ring and size the expert slots.

    expert_loads: {layer: (E,) tokens per expert}, e.g. routing counts measured on a corpus;
    missing layers (and the default) use uniform loads."""
    from models.moe.topology import Topology, place_experts

    d, a = config.devices, config.align
    E, k = shape.moe_experts, shape.moe_top_k
    hidden_padded = round_up(shape.n_inner, a)
    m = MoEPlan(experts=E, top_k=k, renormalize=shape.moe_renormalize,
                layers=list(shape.moe_layers), expert_hidden=shape.n_inner,
                expert_hidden_padded=hidden_padded,
                ldb_expert_hidden=hidden_padded // config.lane_width,
                router_padded=round_up(E, a), slots_per_device=ceil_div(E, d))
    topology = Topology.ring(d, link_gbps=config.ring_gbps,
                             hop_latency_us=config.ring_hop_latency_ns / 1e3,
                             local_gbps=config.hbm_peak_gbps)
    # an expert's cost per token is streaming its two matrices from HBM (batch-1 decode)
    expert_bytes = 2 * 2 * shape.n_embd * shape.n_inner
    compute_us = expert_bytes / (config.hbm_peak_gbps * 1e3)
    loads_in = expert_loads or {}
    for layer in m.layers:
        loads = [float(x) for x in loads_in.get(layer, [1.0] * E)]
        if len(loads) != E or min(loads) < 0:
            raise CompileError(f"expert_loads of block {layer} must be {E} counts >= 0, "
                               f"not {loads}")
        placement = place_experts(topology, loads, bytes_per_token=2 * shape.n_embd,
                                  slots_per_rank=m.slots_per_device,
                                  compute_us_per_token=compute_us)
        owners = placement.expert_rank
        slot = [0] * E
        for dev in range(d):
            for s, e in enumerate(e for e in range(E) if owners[e] == dev):
                slot[e] = s
        m.expert_device[layer] = owners
        m.expert_slot[layer] = slot
        m.placement_step_us[layer] = round(placement.step_us, 6)
        m.expert_loads[layer] = loads
    return m


def scalar_tables(plan, device: int) -> dict[int, list[int]]:
    """Channel-0 scalar-area words of `device`'s tables: byte offset -> int32 values."""
    m: MoEPlan = plan.moe
    n_layer = plan.shape.n_layer
    kinds = [1 if layer in m.layers else 0 for layer in range(n_layer)]
    slots = [-1] * (n_layer * m.experts)
    for layer in m.layers:
        for e in range(m.experts):
            if m.expert_device[layer][e] == device:
                slots[layer * m.experts + e] = m.expert_slot[layer][e]
    return {m.kind_table: kinds, m.slot_table: slots}
