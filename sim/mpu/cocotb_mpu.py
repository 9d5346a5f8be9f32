"""cocotb tests of the MPU alone (`sim.mpu.top`): MM micro-ops on random FP16 weights and
vectors, every output compared bit for bit with `hw.numerics` (`matvec`, then `vadd` with the
bias or `round_fp16`), the way `IsaDevice._mm` computes it.

The case comes in TANDEM_MPU_CASE (JSON): seed; rows, cols, ntok; bias, mask, prefetched
(flags of the MM); pause (the probability that each HBM read-data stream and each of the vector
buffer's ports stall in a cycle); optional corrupt, an output word (from `dst`) read back with
one flipped bit (the negative test). The testbench plays the vector buffer (a read answers one cycle
after its request), the HBM read clients of both weight streamers (in-order bursts out of an
`HbmImage`) and the controller (a PREFETCH, then the MM).
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly

from hw import numerics as nx
from hw.hbm import HbmImage
from hw.intmath import ceil_div, round_up
from rtl.core import ops
from sim.mpu.top import BLOCK_BITS, CONFIG, UOP
from sim.tb import TB
from sim.vbuf_port import VbufPortModel, high

P, W, A = CONFIG.hbm_ports, CONFIG.lane_width, CONFIG.align
BEAT = CONFIG.beat_bytes
WORDS = A << BLOCK_BITS
HBM_BASE = [0x40000 * (p + 1) for p in range(P)]  # each port's window in its channel
MATRIX = 0x1000  # the weights' offset inside every channel
SRC, BIAS, DST = 0, WORDS // 4, WORDS // 2  # vector buffer words


def pack16(values) -> int:
    out = 0
    for i, v in enumerate(np.asarray(values, np.float16).view(np.uint16)):
        out |= int(v) << (16 * i)
    return out


def uop_word(**fields) -> int:
    word = 0
    for name, value in fields.items():
        field = UOP[name]
        width = field.shape.width if hasattr(field.shape, "width") else int(field.shape)
        word |= (int(value) & ((1 << width) - 1)) << field.offset
    return word


class Memories(VbufPortModel):
    """The vector buffer's ports (`VbufPortModel`) and the HBM channels behind the
    prefetcher's and the direct AXI read ports, with random back-pressure."""

    def __init__(self, dut, image: HbmImage, vbuf: np.ndarray, rng: random.Random,
                 pause: float):
        super().__init__(dut, vbuf.view(np.uint16), rng, pause, BLOCK_BITS, A)
        self.image = image
        self.bursts: dict[tuple[str, int], list] = {
            (name, p): [] for name in ("pref", "direct") for p in range(P)}
        self.data_valid = dict.fromkeys(self.bursts, False)
        self.errors: list[str] = []

    def drive(self) -> None:
        super().drive()
        dut = self.dut
        for (name, p), queue in self.bursts.items():
            port = f"axi_{name}__{p}__read_"
            getattr(dut, port + "req__ready").value = 1
            valid = bool(queue) and self.rng.random() >= self.pause
            self.data_valid[name, p] = valid
            getattr(dut, port + "data__valid").value = int(valid)
            if valid:
                addr, beat, beats = queue[0]
                offset = addr - HBM_BASE[p] + beat * BEAT
                data = self.image.read_bytes(p, offset, BEAT).view(np.float16)
                last = int(beat == beats - 1)
                getattr(dut, port + "data__payload").value = pack16(data) | (last << (16 * W))

    def sample(self) -> None:
        super().sample()
        dut = self.dut
        for (name, p), queue in self.bursts.items():
            port = f"axi_{name}__{p}__read_"
            if self.data_valid[name, p] and high(getattr(dut, port + "data__ready")):
                addr, beat, beats = queue[0]
                if beat + 1 == beats:
                    queue.pop(0)
                else:
                    queue[0] = (addr, beat + 1, beats)
            if high(getattr(dut, port + "req__valid")):
                req = int(getattr(dut, port + "req__payload").value)
                addr, beats = req & ((1 << 64) - 1), req >> 64
                if addr % BEAT or beats == 0:
                    self.errors.append(f"{name} port {p}: bad burst {addr:#x} x {beats}")
                queue.append((addr, 0, beats))


@cocotb.test()
async def mm_matches_numerics(dut):
    case = json.loads(os.environ["TANDEM_MPU_CASE"])
    rng = random.Random(case["seed"])
    nrng = np.random.default_rng(case["seed"])
    rows, cols, ntok = case["rows"], case["cols"], case["ntok"]
    bias, mask, prefetched = case["bias"], case["mask"], case["prefetched"]
    ldb = ceil_div(cols, W) + case.get("extra_beats", 0)
    weights = (nrng.standard_normal((rows, cols)) * case.get("scale", 1.0)).astype(np.float16)
    vectors = nrng.standard_normal((ntok, cols)).astype(np.float16)
    biases = nrng.standard_normal(rows).astype(np.float16)
    sstride, dstride = round_up(cols, A), round_up(rows, A)

    image = HbmImage(CONFIG)
    image.write_matrix(MATRIX, ldb, weights)
    vbuf = np.zeros(WORDS, np.float16)
    # the old contents of the destination show which words the MM wrote
    vbuf[DST:DST + ntok * dstride] = np.float16(12345.0)
    for t in range(ntok):
        vbuf[SRC + t * sstride:SRC + t * sstride + cols] = vectors[t]
    vbuf[BIAS:BIAS + rows] = biases

    expected = vbuf.copy()
    padded = round_up(rows, A)
    for t in range(ntok):
        y32 = nx.matvec(weights, vectors[t], W)
        y = nx.vadd(y32, biases) if bias else nx.round_fp16(y32)
        if mask:
            y = np.concatenate([y, np.full(padded - rows, -np.inf, np.float16)])
        expected[DST + t * dstride:DST + t * dstride + len(y)] = y

    tb = TB(dut)
    mem = tb.add(Memories(dut, image, vbuf, rng, case["pause"]))
    for name in ("uop", "pref"):
        getattr(dut, f"{name}__valid").value = 0
        getattr(dut, f"{name}__payload").value = 0
    dut.clear.value = 0
    for p in range(P):
        getattr(dut, f"hbm_base__{p}").value = HBM_BASE[p]
    mem.drive()
    await tb.reset(cycles=3)

    flags = ((1 << ops.flag_bit("MM", "bias")) * bias | (1 << ops.flag_bit("MM", "mask")) * mask
             | (1 << ops.flag_bit("MM", "prefetched")) * prefetched)
    mm = uop_word(op=0, pc=7, sb=5, w=MATRIX, ldb=ldb, rows=rows, cols=cols, ntok=ntok,
                  src=SRC, sstride=sstride, dst=DST, dstride=dstride, bias=BIAS, flags=flags)
    pref = uop_word(op=0, pc=6, w=MATRIX, ldb=ldb, rows=rows, cols=cols)
    to_send = [("pref", pref)] if prefetched else []
    to_send.append(("uop", mm))
    retired = None
    released = 0
    limit = 200 + 8 * ntok * round_up(rows, 4 * P) * ldb * 4
    for cycle in range(limit):
        await FallingEdge(dut.clk)
        mem.drive()
        if to_send:
            name, word = to_send[0]
            getattr(dut, f"{name}__valid").value = 1
            getattr(dut, f"{name}__payload").value = word
        await ReadOnly()
        mem.sample()
        if to_send:
            name, _ = to_send[0]
            if high(getattr(dut, f"{name}__ready")):
                to_send.pop(0)
                await FallingEdge(dut.clk)
                getattr(dut, f"{name}__valid").value = 0
                mem.drive()
                await ReadOnly()
                mem.sample()
        released |= int(dut.release_reads.value)
        if int(dut.retire.value) & 1:
            assert int(dut.retire_pc__0.value) == 7
            assert int(dut.release_write.value) == 1 << 5
            retired = cycle
            break
    assert retired is not None, f"the MM did not retire within {limit} cycles"
    assert released == 1 << 5, f"release_reads was {released:#x}"
    assert not mem.errors, mem.errors[:5]
    got, want = vbuf.view(np.uint16), expected.view(np.uint16)
    if "corrupt" in case:  # negative test: the checker must see one bad bit
        got[DST + case["corrupt"]] ^= 1
    bad = np.flatnonzero(got != want)
    if bad.size:
        lines = [f"{bad.size} words differ, first at word {bad[0]}:"]
        for i in bad[:12]:
            t, r = divmod(int(i) - DST, dstride)
            lines.append(f"  token {t} row {r}: got {vbuf[i]!r} ({got[i]:#06x}), expected "
                         f"{expected[i]!r} ({want[i]:#06x})")
        raise AssertionError("\n".join(lines))
    dut._log.info("MM %dx%d x %d tokens: %d cycles, %d writes, bit-exact", rows, cols, ntok,
                  retired, len(mem.writes))
