"""TA-MoE: water-filled dispatch targets, the topology-aware loss, and expert placement."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.errors import ModelConfigError
from models.gpt2 import MLP
from models.moe import (
    MoE,
    Topology,
    dispatch_targets,
    expert_targets,
    load_balancing_loss,
    place_experts,
    topology_aux_loss,
)
from models.moe.topology import _step_us
from models.testing import tiny_config

from .moe_helpers import write_json


def _two_ranks(local_gbps=100.0, remote_gbps=25.0, remote_latency_us=0.0) -> Topology:
    return Topology([[local_gbps, remote_gbps], [remote_gbps, local_gbps]],
                    [[0.0, remote_latency_us], [remote_latency_us, 0.0]])


def test_without_latency_targets_are_proportional_to_bandwidth():
    p = dispatch_targets(_two_ranks(), tokens_per_rank=1000, bytes_per_token=512)
    assert p[0] == pytest.approx([0.8, 0.2])
    assert p[1] == pytest.approx([0.2, 0.8])


def test_water_filling_by_hand_with_latency():
    topo = _two_ranks(remote_latency_us=10.0)  # local 1e5 B/us from t=0, remote 2.5e4 from 10 us
    # 0.5 MB fit locally before the remote pair could start: all local
    assert dispatch_targets(topo, 500, 1000)[0] == pytest.approx([1.0, 0.0])
    # 3.5 MB: both finish at T = (3.5e6 + 2.5e4 * 10) / 1.25e5 = 30 us -> 3 MB local, 0.5 MB remote
    assert dispatch_targets(topo, 3500, 1000)[0] == pytest.approx([6 / 7, 1 / 7])
    # the rule: every pair that carries data finishes at the same time
    sent = [s * 3.5e6 for s in dispatch_targets(topo, 3500, 1000)[0]]
    assert topo.transfer_us(0, 0, sent[0]) == pytest.approx(topo.transfer_us(0, 1, sent[1]))


def test_cluster_targets_favour_the_node_and_smoothing_mixes_in_uniform():
    topo = Topology.cluster(nodes=2, gpus_per_node=2, intra_gbps=100, inter_gbps=10,
                            local_gbps=400, intra_latency_us=0, inter_latency_us=0)
    p = dispatch_targets(topo, 4096, 1024)
    assert p[0] == pytest.approx([400 / 520, 100 / 520, 10 / 520, 10 / 520])
    assert p[3] == pytest.approx([10 / 520, 10 / 520, 100 / 520, 400 / 520])
    half = dispatch_targets(topo, 4096, 1024, smoothing=0.5)
    assert half[0] == pytest.approx([0.5 * v + 0.125 for v in p[0]])
    assert all(sum(row) == pytest.approx(1.0) for row in half)


def test_ring_hops_cost_latency_and_share_links():
    ring = Topology.ring(devices=4, link_gbps=100, hop_latency_us=1.5, local_gbps=400)
    assert ring.bandwidth_gbps[0] == (400.0, 100.0, 50.0, 100.0)
    assert ring.latency_us[0] == (0.0, 1.5, 3.0, 1.5)
    one_way = Topology.ring(devices=4, link_gbps=100, hop_latency_us=1.5, bidirectional=False)
    assert one_way.latency_us[0] == (0.0, 1.5, 3.0, 4.5)


def test_expert_targets_split_rank_shares_over_their_experts():
    t = expert_targets([0.5, 0.3, 0.2], [0, 0, 1, 2])
    assert t.tolist() == pytest.approx([0.25, 0.25, 0.3, 0.2])


def test_topology_loss_is_switch_loss_for_uniform_targets_and_least_at_the_targets():
    torch.manual_seed(0)
    gates = torch.softmax(torch.randn(64, 4), dim=1)
    assigned = torch.nn.functional.one_hot(gates.argmax(dim=1), 4)
    uniform = torch.full((4,), 0.25)
    torch.testing.assert_close(topology_aux_loss(gates, assigned, uniform),
                               load_balancing_loss(gates, assigned))
    # With probabilities equal to the dispatch fractions f, L(f) = sum f^2 / t: 1 at f = t
    t = torch.tensor([0.4, 0.3, 0.2, 0.1])
    ones = torch.ones(1, 4)

    def loss_at(f):
        return topology_aux_loss(f.view(1, 4), f.view(1, 4) * ones, t).item()

    assert loss_at(t) == pytest.approx(1.0)
    for seed in range(20):
        f = torch.softmax(torch.randn(4, generator=torch.Generator().manual_seed(seed)), dim=0)
        assert loss_at(f) >= 1.0 - 1e-6


def test_training_on_the_topology_loss_moves_dispatch_to_the_targets():
    torch.manual_seed(0)
    layer = MoE(16, MLP(tiny_config(n_embd=16)), num_experts=4, k=1, capacity_factor=4.0,
                use_rts=False)
    targets = torch.tensor([0.4, 0.3, 0.2, 0.1])
    layer.gate.set_dispatch_targets(targets)
    x = torch.randn(512, 16)
    optimizer = torch.optim.Adam(layer.gate.parameters(), lr=0.05)
    for _ in range(100):  # the loss only moves the router: train the gate alone
        l_aux = layer.gate(x).routing.l_aux
        optimizer.zero_grad()
        l_aux.backward()
        optimizer.step()
    _, _, counts = layer(x)
    assert (counts / counts.sum()).tolist() == pytest.approx(targets.tolist(), abs=0.05)


def test_bad_topologies_and_targets_are_refused():
    with pytest.raises(ModelConfigError, match="square"):
        Topology([[1.0, 2.0]], [[0.0, 0.0]])
    with pytest.raises(ModelConfigError, match="bandwidth_gbps entry must be > 0"):
        Topology([[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
    layer = MoE(16, MLP(tiny_config(n_embd=16)), num_experts=4)
    with pytest.raises(ModelConfigError, match="4 positive shares"):
        layer.gate.set_dispatch_targets(torch.tensor([0.5, 0.5]))


def test_topology_round_trips_through_json(tmp_path):
    ring = Topology.ring(3, 50, 2.0)
    assert Topology.from_json(write_json(tmp_path / "t.json", ring.to_dict())) == ring


# -- placement --------------------------------------------------------------------------------


def _brute_force(topo, loads, slots, bytes_per_token, compute):
    E, R = len(loads[0]), topo.num_ranks
    best = float("inf")
    for assign in itertools.product(range(R), repeat=E):
        if max(assign.count(r) for r in range(R)) <= slots:
            best = min(best, _step_us(topo, loads, assign, bytes_per_token, compute)[0])
    return best


@pytest.mark.parametrize("seed", range(4))
def test_placement_reaches_the_brute_force_optimum_on_small_rings(seed):
    g = torch.Generator().manual_seed(seed)
    topo = Topology.ring(3, link_gbps=20, hop_latency_us=2.0, local_gbps=200)
    loads = (torch.rand(6, generator=g) * 4000).round()
    placement = place_experts(topo, loads, bytes_per_token=1536, slots_per_rank=2,
                              source_ranks=[0], compute_us_per_token=0.05)
    per_source = [[float(v) if r == 0 else 0.0 for v in loads] for r in range(3)]
    best = _brute_force(topo, per_source, 2, 1536, 0.05)
    assert placement.step_us == pytest.approx(best, rel=1e-9)
    assert max(placement.expert_rank.count(r) for r in range(3)) <= 2


def test_placement_puts_the_heaviest_expert_next_to_the_tokens():
    topo = Topology.ring(4, link_gbps=25, hop_latency_us=1.0, local_gbps=400)
    loads = [10.0, 10.0, 10.0, 5000.0]
    placement = place_experts(topo, loads, bytes_per_token=2048, slots_per_rank=1,
                              source_ranks=[0])
    assert placement.expert_rank[3] == 0
    assert placement.rank_tokens[0] == pytest.approx(5000.0)


def test_placement_balances_uniform_all_to_all():
    topo = Topology.cluster(2, 2, intra_gbps=100, inter_gbps=10)
    placement = place_experts(topo, [100.0] * 8, bytes_per_token=1024)
    assert sorted(placement.expert_rank) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_placement_refuses_what_cannot_fit():
    with pytest.raises(ModelConfigError, match="do not fit"):
        place_experts(Topology.ring(2, 10, 1.0), [1.0] * 5, 100, slots_per_rank=2)
