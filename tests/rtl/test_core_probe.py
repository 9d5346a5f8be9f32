"""Where the RTL and the `isa` backend part: a compiled GPT-2 program cut after layer 0's first
layernorm, followed by MMs in every variant (direct and prefetched, 1 and 4 tokens, with and
without bias), each result stored to HBM and compared bit for bit with the `isa` backend.

Asserted: the embedding (LOADR, VADD), the layer parameters (LOADV), the layernorm chain
(VSUM, SMULI, VADDS, VDOT, SADDH, SRSQRT, VMULS, VFMA) and every MM variant are bit-exact. The
MMs once differed from the first element on: after reset the vector buffer handed its read
port 0 (the MPU's) a response it never asked for, so the MPU's vector FIFO ran one block behind.
"""

from __future__ import annotations

import numpy as np
import pytest

from host.compiler import compile_model
from host.runtime.rtl import RtlCluster
from hw.config import TINY
from hw.isa import assemble
from hw.isasim import IsaCluster
from hw.layout import DESC
from models.testing import hf_checkpoint

pytestmark = [pytest.mark.rtl, pytest.mark.slow, pytest.mark.simulator("verilator")]

# (vbuf start, words) of what the probe stores, and what produced it. The vbuf addresses of the
# compiled program (embedding rows at 728, layernorm output at 1496, parameters at 0) are pinned
# by the model shape below; the test checks the cut lands right before layer 0's QKV MM.
_W = "w=208+r7 ldb=4 rows=96 cols=32"
PROGRAM_REGIONS = {"embedding": (728, 128), "layernorm": (1496, 128), "parameters": (0, 416)}
MM_VARIANTS = {
    "direct_1_token": (4096, 96, f"MM dst=4096 src=1496 {_W} ntok=1 dstride=96 sstride=32 "
                       "bias=0"),
    "direct_4_tokens": (4608, 384, f"MM dst=4608 src=1496 {_W} ntok=4 dstride=96 sstride=32 "
                        "bias=0"),
    "prefetched_1_token": (5120, 96, f"MM dst=5120 src=1496 {_W} ntok=1 dstride=96 "
                           "sstride=32 bias=0 flags=prefetched"),
    "direct_4_tokens_bias": (6656, 384, f"MM dst=6656 src=1496 {_W} ntok=4 dstride=96 "
                             "sstride=32 bias=64 flags=bias"),
}
_STORE_BASE = 0x18000  # HBM bytes above the image


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    model = hf_checkpoint(tmp_path_factory.mktemp("probe"), vocab=97, n_pos=24, n_embd=32,
                          n_layer=1, n_head=2)
    compiled = compile_model(model, TINY)
    program = compiled.programs[0]
    cut = next(i for i, ins in enumerate(program) if ins.op == "MM")
    assert program[cut].args["dst"].imm == 2264  # the QKV MM of layer 0, as the regions assume
    regions = {**PROGRAM_REGIONS, **{k: v[:2] for k, v in MM_VARIANTS.items()}}
    lines = [v[2] for v in MM_VARIANTS.values()]
    lines += [f"STOREV dst={_STORE_BASE + k * 0x1000} src={src} len={n}"
              for k, (src, n) in enumerate(regions.values())]
    probe_program = list(program[:cut]) + assemble([*lines, "HALT"])
    out = {}
    for cluster in (IsaCluster(TINY), RtlCluster(TINY)):
        cluster.load([probe_program], compiled.images)
        for offset, values in ((DESC.N_PROMPT, [4]), (DESC.POS0, [0]), (DESC.MAX_NEW, [1]),
                               (DESC.N_OUT, [0]), (DESC.PROMPT, [3, 5, 7, 9])):
            cluster.write_i32(0, offset, values)
        cluster.start()
        cluster.wait()
        out[cluster.kind] = {name: cluster.image(0).read_vector(_STORE_BASE + k * 0x1000, n)
                             for k, (name, (_, n)) in enumerate(regions.items())}
    return out


def _differing(probe, name: str) -> np.ndarray:
    isa, rtl = probe["isa"][name], probe["rtl"][name]
    return np.flatnonzero(isa.view(np.uint16) != rtl.view(np.uint16))


@pytest.mark.parametrize("name", list(PROGRAM_REGIONS))
def test_program_prefix_is_bit_exact(probe, name):
    assert np.any(probe["isa"][name] != 0)  # the region holds data, not an empty buffer
    assert _differing(probe, name).size == 0


@pytest.mark.parametrize("name", list(MM_VARIANTS))
def test_mm_is_bit_exact(probe, name):
    bad = _differing(probe, name)
    assert bad.size == 0, f"{bad.size} of {probe['isa'][name].size} outputs differ"
