"""One device-cluster protocol: the `isa`, `rtl` and `board` clusters all provide
`host.runtime.api.DeviceCluster`, and `ClusterBackend` builds its devices once, through the
factory it is given (the rtl and board backends used to build an `IsaCluster` and throw it
away). Nothing here simulates: building and loading a cluster is enough."""

from __future__ import annotations

import pytest
import torch

from host.compiler import compile_model
from host.runtime import GenerationRequest
from host.runtime.api import ClusterDevice, DeviceCluster
from host.runtime.board import BoardBackend, BoardCluster
from host.runtime.cluster_backend import ClusterBackend
from host.runtime.rtl import RtlBackend, RtlCluster
from hw.config import load_config
from hw.isasim import IsaCluster
from models.config import GPT2Config
from models.gpt2 import GPT2LMHead


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=61, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    return GPT2LMHead(config).eval()


# (ids are the class names: a test id containing `board` is taken for one needing a card)
CLUSTERS = {
    "IsaCluster": ("isa", lambda config: IsaCluster(config)),
    "RtlCluster": ("rtl", lambda config: RtlCluster(config)),
    "BoardCluster": ("board", lambda config: BoardCluster(config, "none.xclbin")),
}


@pytest.mark.parametrize("cls", CLUSTERS)
def test_every_cluster_provides_the_protocol(model, cls):
    config = load_config("tiny", 2)
    compiled = compile_model(model, config)
    kind, make = CLUSTERS[cls]
    cluster = make(config)
    assert isinstance(cluster, DeviceCluster)
    assert cluster.kind == kind
    cluster.load(compiled.programs, compiled.images)
    assert len(cluster.devices) == 2
    for device in cluster.devices:
        assert isinstance(device, ClusterDevice)
    # the job descriptor goes through the protocol's memory calls alike on every cluster
    cluster.write_i32(1, 64, [7, -3])
    assert cluster.read_i32(1, 64, 2).tolist() == [7, -3]
    assert cluster.image(1).read_i32(64, 2).tolist() == [7, -3]


def test_the_backend_builds_its_cluster_once_through_the_factory(model):
    built = []

    def factory(compiled):
        built.append(IsaCluster(compiled.config))
        return built[-1]

    backend = ClusterBackend(model, load_config("tiny", 2), cluster_factory=factory)
    assert built == [backend.cluster]
    tokens = [s.token for s in backend.stream(GenerationRequest([1, 2, 3], 3))]
    reference = ClusterBackend(model, load_config("tiny", 2))
    assert isinstance(reference.cluster, IsaCluster)
    assert tokens == [s.token for s in reference.stream(GenerationRequest([1, 2, 3], 3))]
    assert len(built) == 1


@pytest.mark.parametrize("backend", [RtlBackend, BoardBackend], ids=lambda b: b.__name__)
def test_rtl_and_board_backends_build_no_isa_cluster(model, monkeypatch, backend):
    made = []
    init = IsaCluster.__init__

    def counting_init(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(IsaCluster, "__init__", counting_init)
    config = load_config("tiny", 2)
    if backend is RtlBackend:
        built = RtlBackend(model, config, progress=False)
        assert isinstance(built.cluster, RtlCluster)
        # the memory models are sized from the compiled plan, as before the factory
        extent = max(r.offset + r.size for r in built.compiled.plan.hbm.values())
        assert built.cluster.hbm_bytes == extent
    else:
        built = BoardBackend(model, config, "none.xclbin")
        assert isinstance(built.cluster, BoardCluster)
    assert len(built.cluster.devices) == 2
    assert made == []
