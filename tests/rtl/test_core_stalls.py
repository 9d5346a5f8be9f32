"""Ladder rung 4 under stalls: the end-to-end bench of tests/rtl/test_core_e2e.py (the same
`Bench`, so the cached Verilator build is reused) with the HDL HBM models and ring links
thinning out their handshakes at random (`hbm_rate`, `link_rate` out of 256, a fixed seed), on
2 devices: the tokens and every HBM byte stay bit-exact with the `isa` backend, and the kernels
still run the `isa` backend's instruction stream to HALT without a fault."""

from __future__ import annotations

import numpy as np
import pytest

from host.runtime import GenerationRequest, make_backend
from host.runtime.cluster_backend import ClusterBackend
from hw.config import load_config
from models.testing import hf_checkpoint

pytestmark = [pytest.mark.rtl, pytest.mark.slow, pytest.mark.simulator("verilator")]

PROMPT = [3, 5, 7, 9]
NEW_TOKENS = 3
DEVICES = 2
HBM_RATE, LINK_RATE, SEED = 160, 128, 7  # out of 256: ~37% and 50% of handshakes refused


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # the e2e test's model: 1 layer, 2 heads of 16, split over 2 devices
    model = hf_checkpoint(tmp_path_factory.mktemp("stalls"), vocab=97, n_pos=24, n_embd=32,
                          n_layer=1, n_head=2)
    request = GenerationRequest(list(PROMPT), NEW_TOKENS)
    isa = ClusterBackend(model, load_config("tiny", DEVICES))
    isa_steps = list(isa.stream(request))
    rtl = make_backend("rtl", model, config="tiny", devices=DEVICES)
    rtl.cluster.hbm_rate, rtl.cluster.link_rate, rtl.cluster.seed = HBM_RATE, LINK_RATE, SEED
    rtl_steps = list(rtl.stream(request))
    return isa, rtl, isa_steps, rtl_steps


def test_kernels_finish_the_isa_instruction_stream(runs):
    isa, rtl, _, rtl_steps = runs
    status = rtl.cluster.result["devices"]
    assert [s["done"] for s in status] == [True] * DEVICES
    assert [s["fault"] for s in status] == [0] * DEVICES
    assert len(rtl_steps) == NEW_TOKENS
    for d, dev in enumerate(rtl.cluster.devices):
        assert dev.executed == isa.cluster.devices[d].executed
        assert [pc for pc, _, _ in dev.timeline] == [
            t["pc"] for t in rtl.cluster.reference.devices[d].trace]
    print(f"cycles under stalls (hbm_rate={HBM_RATE}, link_rate={LINK_RATE}): "
          f"{[dev.cycles for dev in rtl.cluster.devices]}")


def test_tokens_and_memory_are_bit_exact_with_isa(runs):
    isa, rtl, isa_steps, rtl_steps = runs
    assert [s.token for s in rtl_steps] == [s.token for s in isa_steps]
    for d in range(DEVICES):
        for port in range(rtl.config.hbm_ports):
            a = rtl.cluster.image(d).channels[port]
            b = isa.cluster.image(d).channels[port]
            n = max(len(a), len(b))
            differ = np.flatnonzero(np.pad(a, (0, n - len(a))) != np.pad(b, (0, n - len(b))))
            assert not differ.size, (f"device {d} port {port}: {differ.size} bytes differ, "
                                     f"first at {differ[:8].tolist()}")
