"""Ladder rung 4 for MoE-GPT: the RTL kernels run a compiled MoE program (router, top-2 on the
device, experts selected through run-time addresses, expert-parallel slots summed after the
ring) bit-exactly like the `isa` backend, and the tokens are the golden model's.

One small MoE block (4 experts of width 64, top-2) on 1 and on 2 devices, 8 tokens after a
4-token prompt; the Verilator build is the one `test_core_e2e.py` uses (same bench), so
nothing is rebuilt when that test has run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from host.runtime import GenerationRequest, make_backend
from host.runtime.cluster_backend import ClusterBackend
from hw.config import load_config
from models.testing import moe_checkpoint

pytestmark = [pytest.mark.rtl, pytest.mark.slow, pytest.mark.simulator("verilator")]

PROMPT = [3, 5, 7, 9]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("moe-e2e")
    return moe_checkpoint(path, vocab=97, n_pos=24, n_embd=32, n_layer=1, n_head=2,
                          n_inner=64, experts=4, top_k=2, moe_every=1)


@pytest.mark.parametrize("devices", [1, 2])
def test_moe_tokens_and_memory_are_bit_exact_with_isa_and_golden(model, devices):
    request = GenerationRequest(list(PROMPT), NEW_TOKENS)
    isa = ClusterBackend(model, load_config("tiny", devices))
    isa_tokens = [s.token for s in isa.stream(request)]
    rtl = make_backend("rtl", model, config="tiny", devices=devices)
    rtl_tokens = [s.token for s in rtl.stream(request)]
    status = rtl.cluster.result["devices"]
    assert [s["fault"] for s in status] == [0] * devices
    assert rtl_tokens == isa_tokens
    for d in range(devices):
        assert rtl.cluster.devices[d].executed == isa.cluster.devices[d].executed
        for port in range(rtl.config.hbm_ports):
            a = rtl.cluster.image(d).channels[port]
            b = isa.cluster.image(d).channels[port]
            n = max(len(a), len(b))
            differ = np.flatnonzero(np.pad(a, (0, n - len(a))) != np.pad(b, (0, n - len(b))))
            assert not differ.size, f"device {d} port {port}: {differ.size} bytes differ"
    with torch.no_grad():
        assert rtl_tokens == model.generate(PROMPT, NEW_TOKENS)
