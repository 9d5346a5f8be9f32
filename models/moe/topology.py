"""TA-MoE: dispatch targets and expert placement from a communication-cost model.

`Topology` holds, for R ranks (GPUs, FPGAs, or both), the effective bandwidth and latency of
sending from rank i to rank j under all-to-all load; the diagonal is the local copy. A pair
moving n bytes takes

    t_ij(n) = latency_ij + n / bandwidth_ij        (n > 0; an empty pair costs nothing)

Dispatch targets (`dispatch_targets`). Rank i routes N = k * tokens_per_rank assignments of
b bytes each; it sends n_ij tokens to rank j and its all-to-all ends when its slowest pair
does: T_i = max_j t_ij(n_ij b). Minimising T_i subject to sum_j n_ij = N, n_ij >= 0 is a
water-filling problem: at the optimum every pair that carries data finishes at the same time
T (otherwise moving a token from the slowest pair to a faster one lowers the maximum), so

    n_ij = max(0, T - latency_ij) * bandwidth_ij / b,   with T the root of sum_j n_ij = N,

found exactly by walking the pairs in order of latency (sum_j n_ij is piecewise linear and
increasing in T). The target share of rank j is p_ij = n_ij / N: proportional to bandwidth
when the volume dominates, with slow-to-start pairs cut when it does not. `smoothing` mixes
p with the uniform share (1 - s) * p + s / R, the knob between speed (s = 0) and the load
balance that model quality prefers (s = 1 is the plain GShard objective). An expert's target
is its rank's share divided by the experts on that rank.

Topology-aware loss (`topology_aux_loss`). The GShard/Switch loss E * sum_e P_e f_e pulls the
dispatch fractions f towards uniform. Weighting each expert by its target t_e instead,

    L = sum_e P_e f_e / t_e   (divided by k),

pulls f towards t: with P ~ f, minimising sum_e f_e^2 / t_e subject to sum_e f_e = 1 gives
f_e = t_e (Lagrange: 2 f_e / t_e = lambda), where L = 1; uniform t recovers the Switch loss.

Placement (`place_experts`). Given measured expert loads, put experts on ranks (at most
`slots_per_rank` each) so that one step's time is smallest, where a destination can compute
only once its last input has arrived:

    step = max_d [ max_s t_sd(bytes from s to d) + compute_us_per_token * tokens at d ]

Greedy (heaviest expert first, to the rank that raises the step time least) and then
pairwise swaps until none helps. Pure functions: the FPGA compiler places experts with the
same model that TA-MoE trains against.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ModelConfigError

__all__ = [
    "Placement",
    "Topology",
    "dispatch_targets",
    "expert_targets",
    "place_experts",
    "topology_aux_loss",
]

Matrix = tuple[tuple[float, ...], ...]


def _matrix(rows: Sequence[Sequence[float]], name: str) -> Matrix:
    out = tuple(tuple(float(v) for v in row) for row in rows)
    if not out or any(len(row) != len(out) for row in out):
        raise ModelConfigError(f"{name} must be a square R x R matrix")
    return out


@dataclass(frozen=True)
class Topology:
    """Effective point-to-point cost between R ranks; entry [i][j] is for i sending to j."""

    bandwidth_gbps: Matrix  # GB/s (1 GB/s moves 1000 bytes per microsecond); diagonal: local
    latency_us: Matrix  # microseconds before the first byte arrives

    def __post_init__(self) -> None:
        bw = _matrix(self.bandwidth_gbps, "bandwidth_gbps")
        lat = _matrix(self.latency_us, "latency_us")
        if len(bw) != len(lat):
            raise ModelConfigError(
                f"bandwidth_gbps is {len(bw)}x{len(bw)} but latency_us is {len(lat)}x{len(lat)}")
        if any(v <= 0 for row in bw for v in row):
            raise ModelConfigError("every bandwidth_gbps entry must be > 0")
        if any(v < 0 for row in lat for v in row):
            raise ModelConfigError("every latency_us entry must be >= 0")
        object.__setattr__(self, "bandwidth_gbps", bw)
        object.__setattr__(self, "latency_us", lat)

    @property
    def num_ranks(self) -> int:
        return len(self.bandwidth_gbps)

    def transfer_us(self, src: int, dst: int, nbytes: float) -> float:
        """Time to move `nbytes` from `src` to `dst`; 0 for nothing."""
        if nbytes <= 0:
            return 0.0
        return self.latency_us[src][dst] + nbytes / (self.bandwidth_gbps[src][dst] * 1e3)

    # -- common shapes ------------------------------------------------------------------------

    @classmethod
    def cluster(cls, nodes: int, gpus_per_node: int, intra_gbps: float, inter_gbps: float,
                local_gbps: float = 1000.0, intra_latency_us: float = 2.0,
                inter_latency_us: float = 10.0) -> Topology:
        """GPUs in nodes: `intra_gbps` inside a node (NVLink), `inter_gbps` across (per GPU)."""
        R = nodes * gpus_per_node
        node = [r // gpus_per_node for r in range(R)]
        bw = [[local_gbps if i == j else intra_gbps if node[i] == node[j] else inter_gbps
               for j in range(R)] for i in range(R)]
        lat = [[0.0 if i == j else intra_latency_us if node[i] == node[j] else inter_latency_us
                for j in range(R)] for i in range(R)]
        return cls(bw, lat)

    @classmethod
    def ring(cls, devices: int, link_gbps: float, hop_latency_us: float,
             local_gbps: float = 460.0, bidirectional: bool = True) -> Topology:
        """Devices on a ring (DFX's FPGA ring): h hops cost h latencies, and a transfer over h
        links uses h links' worth of capacity, so its effective bandwidth is link / h."""
        bw, lat = [], []
        for i in range(devices):
            bw_row, lat_row = [], []
            for j in range(devices):
                fwd = (j - i) % devices
                hops = min(fwd, devices - fwd) if bidirectional else fwd
                bw_row.append(local_gbps if hops == 0 else link_gbps / hops)
                lat_row.append(hops * hop_latency_us)
            bw.append(bw_row)
            lat.append(lat_row)
        return cls(bw, lat)

    @classmethod
    def from_dict(cls, raw: dict) -> Topology:
        try:
            return cls(raw["bandwidth_gbps"], raw["latency_us"])
        except KeyError as e:
            raise ModelConfigError(f"a topology needs bandwidth_gbps and latency_us, not {e}") \
                from None

    @classmethod
    def from_json(cls, path: str | Path) -> Topology:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        return {"bandwidth_gbps": [list(r) for r in self.bandwidth_gbps],
                "latency_us": [list(r) for r in self.latency_us]}


def _water_fill(latency: Sequence[float], rate: Sequence[float], volume: float) -> list[float]:
    """Bytes per pair (pair j moves `rate[j]` bytes/us after `latency[j]` us) such that every
    pair that carries data finishes at the same time T; they sum to `volume`."""
    order = sorted(range(len(latency)), key=lambda j: latency[j])
    for m in range(1, len(order) + 1):
        opened = order[:m]  # the m pairs that start soonest
        T = (volume + sum(rate[j] * latency[j] for j in opened)) / sum(rate[j] for j in opened)
        if m == len(order) or latency[order[m]] >= T:
            break
    return [max(0.0, T - latency[j]) * rate[j] for j in range(len(latency))]


def dispatch_targets(topology: Topology, tokens_per_rank: int, bytes_per_token: int,
                     k: int = 1, smoothing: float = 0.0) -> list[list[float]]:
    """p[i][j]: the share of rank i's assignments that should go to rank j (rows sum to 1)."""
    if tokens_per_rank < 1 or bytes_per_token < 1 or k < 1:
        raise ModelConfigError("tokens_per_rank, bytes_per_token and k must be >= 1")
    if not 0 <= smoothing <= 1:
        raise ModelConfigError(f"smoothing must be in [0, 1], not {smoothing}")
    R = topology.num_ranks
    volume = float(k * tokens_per_rank * bytes_per_token)
    out = []
    for i in range(R):
        sent = _water_fill(topology.latency_us[i],
                           [b * 1e3 for b in topology.bandwidth_gbps[i]], volume)
        total = sum(sent)
        out.append([(1 - smoothing) * s / total + smoothing / R for s in sent])
    return out


def expert_targets(rank_shares: Sequence[float], expert_rank: Sequence[int]) -> Tensor:
    """Per-expert targets (E,) for one source rank: its rank shares split evenly among the
    experts each destination holds (`expert_rank[e]` is the rank of expert e)."""
    held = [0] * len(rank_shares)
    for r in expert_rank:
        held[r] += 1
    t = [rank_shares[r] / held[r] for r in expert_rank]
    total = sum(t)
    return torch.tensor([v / total for v in t])


def topology_aux_loss(gates: Tensor, assigned: Tensor, targets: Tensor,
                      k: float | Tensor = 1) -> Tensor:
    """sum_e mean_prob_e * assigned_fraction_e / target_e / k; gates, assigned (S, E).

    Equals the GShard/Switch loss for uniform targets and is minimised (value 1) when the
    dispatch follows `targets` (E,), which must be positive and sum to 1.
    """
    me = gates.mean(dim=0)  # (E,)
    ce = assigned.float().mean(dim=0)  # (E,)
    return torch.sum(me * ce / targets.to(me)) / k


@dataclass
class Placement:
    expert_rank: list[int]  # rank of each expert
    step_us: float  # modelled time of one dispatch + expert step
    rank_tokens: list[float]  # tokens each rank computes per step


def _step_us(topology: Topology, loads: list[list[float]], expert_rank: Sequence[int],
             bytes_per_token: float, compute_us_per_token: float) -> tuple[float, list[float]]:
    R = topology.num_ranks
    sent = [[0.0] * R for _ in range(R)]  # tokens from s to d
    for e, d in enumerate(expert_rank):
        if d < 0:
            continue
        for s in range(len(loads)):
            sent[s][d] += loads[s][e]
    worst = 0.0
    tokens = [sum(sent[s][d] for s in range(R)) for d in range(R)]
    for d in range(R):
        arrive = max(topology.transfer_us(s, d, sent[s][d] * bytes_per_token) for s in range(R))
        worst = max(worst, arrive + compute_us_per_token * tokens[d])
    return worst, tokens


def place_experts(
    topology: Topology,
    expert_loads: Sequence[float] | Sequence[Sequence[float]] | Tensor,
    bytes_per_token: int,
    slots_per_rank: int | None = None,
    source_ranks: Sequence[int] | None = None,
    compute_us_per_token: float = 0.0,
    max_swaps: int = 1000,
) -> Placement:
    """Place E experts on the topology's ranks to minimise the modelled step time.

    expert_loads: tokens per expert per step, (E,) spread evenly over `source_ranks`
    (default: every rank), or (R, E) per source rank. slots_per_rank: experts a rank can
    hold (default ceil(E / R)). Deterministic: ties go to the lowest rank.
    """
    R = topology.num_ranks
    loads_t = torch.as_tensor(expert_loads, dtype=torch.float64)
    if loads_t.dim() == 1:
        sources = list(range(R)) if source_ranks is None else list(source_ranks)
        if not sources or any(not 0 <= s < R for s in sources):
            raise ModelConfigError(f"source_ranks must be ranks in 0..{R - 1}, not {sources}")
        per = torch.zeros(R, loads_t.shape[0], dtype=torch.float64)
        per[sources] = loads_t / len(sources)
        loads_t = per
    if loads_t.dim() != 2 or loads_t.shape[0] != R:
        raise ModelConfigError(f"expert_loads must be (E,) or ({R}, E), not {tuple(loads_t.shape)}")
    if (loads_t < 0).any():
        raise ModelConfigError("expert_loads must be >= 0")
    E = loads_t.shape[1]
    slots = math.ceil(E / R) if slots_per_rank is None else slots_per_rank
    if slots * R < E:
        raise ModelConfigError(
            f"{E} experts do not fit on {R} ranks of {slots} slots; raise slots_per_rank")
    loads = loads_t.tolist()

    def cost(assign: Sequence[int]) -> float:
        return _step_us(topology, loads, assign, bytes_per_token, compute_us_per_token)[0]

    assign = [-1] * E
    used = [0] * R
    for e in sorted(range(E), key=lambda e: (-sum(row[e] for row in loads), e)):
        best = None
        for d in range(R):
            if used[d] >= slots:
                continue
            assign[e] = d
            c = cost(assign)
            if best is None or c < best[0] - 1e-12:
                best = (c, d)
        assign[e] = best[1]
        used[best[1]] += 1

    current = cost(assign)
    for _ in range(max_swaps):  # first-improvement pairwise swaps, then moves to free slots
        improved = False
        for a, b in itertools.combinations(range(E), 2):
            if assign[a] == assign[b]:
                continue
            assign[a], assign[b] = assign[b], assign[a]
            c = cost(assign)
            if c < current - 1e-9:
                current, improved = c, True
                break
            assign[a], assign[b] = assign[b], assign[a]
        if not improved:
            for e, d in itertools.product(range(E), range(R)):
                if assign[e] == d or used[d] >= slots:
                    continue
                old = assign[e]
                assign[e] = d
                c = cost(assign)
                if c < current - 1e-9:
                    used[old] -= 1
                    used[d] += 1
                    current, improved = c, True
                    break
                assign[e] = old
        if not improved:
            break
    step, tokens = _step_us(topology, loads, assign, bytes_per_token, compute_us_per_token)
    return Placement(expert_rank=list(assign), step_us=step, rank_tokens=tokens)
