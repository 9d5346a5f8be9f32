"""The timing model: hand-computed costs, pipelining and dependencies, the prefetch FIFO, and
exactness of the shortcuts the projections take (loop fast-forward, symmetric devices)."""

from __future__ import annotations

import dataclasses

import pytest

from hw.config import PRESETS
from hw.isa import Instr, resolve
from hw.layout import DESC
from hw.perf import Timeline, footprint, mm_compute_cycles, op_cost

CFG = dataclasses.replace(PRESETS["tiny"], hbm_latency_cycles=20, mpu_latency_cycles=10,
                          vpu_latency_cycles=4, acc_interleave=4, prefetch_beats=64,
                          hbm_burst_gap_cycles=0.0)


def _run(tl: Timeline, instr: Instr, regs=(0,) * 16) -> tuple[float, float]:
    v = resolve(instr, list(regs))
    cost = op_cost(instr.op, v, CFG)
    fp = tl.prepare(footprint(instr.op, v, CFG))
    start = tl.ready(cost, fp, [])
    return start, tl.commit(instr.op, v, cost, fp, start)


def test_mm_compute_cycles_by_hand():
    # 8 rows per lane, 4 beats each, one token: groups of L=4 rows -> 2 groups x 4 beats x 4
    assert mm_compute_cycles(8, 4, 1, CFG) == 32
    # 1 row: the adder loop still needs 4 cycles per beat
    assert mm_compute_cycles(1, 4, 1, CFG) == 16
    # 8 tokens: every row alone keeps the loop busy: 8 rows x 4 beats x 8 tokens
    assert mm_compute_cycles(8, 4, 8, CFG) == 256
    # 2 tokens: groups of 2 rows x 2 tokens = 4 partials
    assert mm_compute_cycles(8, 4, 2, CFG) == 64


def test_direct_mm_costs_stream_and_latency():
    # 32 rows over 4 ports/lanes = 8 rows per lane of 32 columns = 4 beats: 32 beats per lane
    mm = Instr("MM", {"dst": 0, "src": 1024, "w": 0, "ldb": 4, "rows": 32, "cols": 32,
                      "ntok": 1, "dstride": 32, "sstride": 32})
    cost = op_cost("MM", resolve(mm, [0] * 16), CFG)
    assert cost.occupancy == 32  # rate 1 beat/cycle on tiny: stream = compute = 32
    assert cost.latency == 20 + 10
    assert cost.hbm_read_bytes == 4 * 32 * 16
    tl = Timeline(CFG)
    assert _run(tl, mm) == (0, 62)


def test_pipelined_engine_and_raw_dependency():
    tl = Timeline(CFG)
    a = Instr("VADD", {"dst": 0, "a": 64, "b": 128, "len": 64})  # 8 beats on 8 lanes
    b = Instr("VADD", {"dst": 256, "a": 64, "b": 128, "len": 64})  # independent
    c = Instr("VMUL", {"dst": 512, "a": 0, "b": 256, "len": 64})  # needs a and b
    assert _run(tl, a) == (0, 12)
    assert _run(tl, b) == (8, 20)  # issues when the engine accepts it, overlaps a's latency
    assert _run(tl, c) == (20, 32)  # waits for b's result


def test_war_hazard_delays_an_overwrite():
    tl = Timeline(CFG)
    # VSUM reads words 0..255 as 32 beats through a dot lane's adder loop, 4 cycles each
    _run(tl, Instr("VSUM", {"sd": 1, "a": 0, "len": 256}))
    start, _ = _run(tl, Instr("LOADV", {"dst": 0, "src": 0, "len": 8}))
    assert start == 128


def test_prefetch_fifo_hides_streaming_behind_a_late_start():
    """A prefetched MM that starts late finds its FIFO full and then runs at compute speed;
    with a FIFO too small, the rest of the stream bounds it."""

    def scenario(fifo: int) -> float:
        cfg = dataclasses.replace(CFG, prefetch_beats=fifo, hbm_channel_gbps=1.6)  # 0.5 beat/c
        tl = Timeline(cfg)
        pf = Instr("PREFETCH", {"w": 0, "ldb": 4, "rows": 64, "cols": 32})  # 64 beats per port
        mm = Instr("MM", {"dst": 0, "src": 1024, "w": 0, "ldb": 4, "rows": 64, "cols": 32,
                          "ntok": 1, "dstride": 64, "sstride": 32, "flags": {"prefetched"}})
        for instr in (pf,):
            v = resolve(instr, [0] * 16)
            tl.commit(instr.op, v, op_cost(instr.op, v, cfg),
                      tl.prepare(footprint(instr.op, v, cfg)), 0)
        v = resolve(mm, [0] * 16)
        cost = op_cost("MM", v, cfg)
        return tl.commit("MM", v, cost, tl.prepare(footprint("MM", v, cfg)), 1000) - 1000

    # FIFO of 64 beats: all fetched by cycle 148; compute 64 cycles + 10 latency
    assert scenario(64) == 74
    # FIFO of 16: the other 48 beats stream at 0.5 beat/cycle after the late start
    assert scenario(16) == 20 + 48 / 0.5 + 10


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory):
    import torch
    import transformers

    import models

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=331, n_positions=48, n_embd=64, n_layer=6,
                                  n_head=4, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg)
    directory = tmp_path_factory.mktemp("mid")
    hf.save_pretrained(directory)
    return models.load_model(directory)


def _timed_run(model, config, functional, symmetric, hints, n_in=5, n_out=6):
    from host.compiler import compile_model
    from hw.isasim import IsaCluster

    compiled = compile_model(model, config)
    cluster = IsaCluster(config, functional=functional, symmetric=symmetric)
    cluster.load(compiled.programs, compiled.images if functional else None)
    if hints:
        cluster.devices[0].loop_hints = compiled.loop_hints(0)
    for d in range(len(cluster.devices)):
        cluster.write_i32(d, DESC.N_PROMPT, [n_in])
        cluster.write_i32(d, DESC.MAX_NEW, [n_out])
        cluster.write_i32(d, DESC.PROMPT, list(range(3, 3 + n_in)))
    cluster.start()
    cluster.wait()
    dev = cluster.devices[0]
    return [snap["cycles"] for _, _, snap in dev.events], dev.timeline.breakdown, dev


def test_fast_forward_is_exact(mid_model):
    config = PRESETS["tiny"].with_devices(2)
    full = _timed_run(mid_model, config, False, True, hints=False)
    fast = _timed_run(mid_model, config, False, True, hints=True)
    assert fast[2].fast_forwarded > 0  # the shortcut was taken
    assert fast[0] == full[0]  # every token at the same cycle
    assert fast[1] == full[1]  # and the same breakdown


def test_symmetric_timing_equals_all_devices_simulated(mid_model):
    """Timing-only projections simulate device 0 alone; with real data on every device and
    real collectives the cycles are the same."""
    config = PRESETS["tiny"].with_devices(2)
    everything = _timed_run(mid_model, config, True, False, hints=False)
    symmetric = _timed_run(mid_model, config, False, True, hints=True)
    assert symmetric[0] == everything[0]


# -- every opcode family's cost, computed by hand from the documented formulas -------------
# CFG (tiny, overridden above): 4 ports of 8 FP16 values (16-byte beats), one beat per cycle
# per port, HBM latency 20, DMA latency 6, bursts of 16 beats; VPU and SFU 8 wide, VPU latency
# 4, SFU 13, reductions 7, scalar 10; the ring at 1.6 GB/s = 8 bytes/cycle, hops of 200 ns =
# 40 cycles at 200 MHz.
GAP = dataclasses.replace(CFG, hbm_burst_gap_cycles=2.0)


def _cost(op: str, cfg=CFG, **args):
    return op_cost(op, resolve(Instr(op, args), [0] * 16), cfg)


def _check(cost, engine, occupancy, latency, category, read=0, write=0):
    assert (cost.engine, cost.occupancy, cost.latency, cost.category) == \
        (engine, occupancy, latency, category)
    assert (cost.hbm_read_bytes, cost.hbm_write_bytes) == (read, write)


def test_control_costs_by_hand():
    for op, args in (("NOP", {}), ("LI", {"rd": 1, "imm": 5}), ("ADD", {"rd": 1, "ra": 2}),
                     ("BLT", {"ra": 1, "rb": 2, "target": 0}), ("JMP", {"target": 0})):
        _check(_cost(op, **args), "ctrl", 1, 0, "control")


def test_dma_costs_by_hand():
    # scalar load / token store: one beat, DMA latency 6 + HBM latency 20
    _check(_cost("LDR", rd=1, addr=0), "dma", 1, 26, "dma", read=4)
    _check(_cost("TOKOUT", ra=1, addr=0), "dma", 1, 26, "dma", write=4)
    # 100 elements round up to 104 = 13 beats, striped over 4 ports: 4 beats on the busiest
    _check(_cost("LOADV", dst=0, src=0, len=100), "dma", 4, 26, "dma", read=13 * 16)
    _check(_cost("STOREV", dst=0, src=0, len=100), "dma", 4, 26, "dma", write=13 * 16)
    # 1280 elements = 160 beats, 40 per port in 3 bursts of <= 16: 40 + 3 x 2 gap cycles
    _check(_cost("LOADV", GAP, dst=0, src=0, len=1280), "dma", 46, 26, "dma", read=160 * 16)
    # a row goes through one port: 13 beats in one burst
    _check(_cost("LOADR", dst=0, mat=0, ldb=13, row=0, len=100), "dma", 13, 26, "dma",
           read=13 * 16)
    _check(_cost("STORER", GAP, mat=0, ldb=13, row=0, src=0, len=100), "dma", 15, 26, "dma",
           write=13 * 16)
    # a column: 10 elements round up to 16, 4 per port, each a write (and a burst) of its own
    _check(_cost("STOREC", mat=0, ldb=1, col=0, src=0, len=10), "dma", 4, 26, "dma",
           write=16 * 16)
    _check(_cost("STOREC", GAP, mat=0, ldb=1, col=0, src=0, len=10), "dma", 12, 26, "dma",
           write=16 * 16)


def test_vector_sfu_and_reduction_costs_by_hand():
    # 20 elements round up to 24 = 3 beats of 8
    _check(_cost("VADD", dst=0, a=0, b=0, len=20), "vpu", 3, 4, "vector")
    _check(_cost("VEXP", dst=0, a=0, len=20), "vpu", 3, 13, "vector")
    _check(_cost("VGELU", dst=0, a=0, len=20), "vpu", 3, 13, "vector")
    # sums go through a dot lane's adder loop: 4 cycles per beat, then VPU + reduce latency
    _check(_cost("VSUM", sd=1, a=0, len=20), "vpu", 12, 4 + 7, "vector")
    _check(_cost("VDOT", sd=1, a=0, b=0, len=20), "vpu", 12, 4 + 7, "vector")
    # compare trees: a beat per cycle, reduce latency only
    _check(_cost("VMAX", sd=1, a=0, len=20), "vpu", 3, 7, "vector")
    _check(_cost("ARGMAX", rd=1, sd=1, a=0, len=20, base=0), "vpu", 3, 7, "vector")
    _check(_cost("VSET", dst=0, s=1), "vpu", 1, 4, "vector")
    _check(_cost("VGET", sd=1, src=0), "vpu", 1, 4, "vector")


def test_scalar_costs_by_hand():
    for op, args in (("SLI", {"sd": 1, "imm": 1.5}), ("SMULI", {"sd": 1, "sa": 2, "imm": 2.0}),
                     ("SADDH", {"sd": 1, "sa": 2, "imm": 1.0}), ("SRECIP", {"sd": 1, "sa": 2}),
                     ("SRSQRT", {"sd": 1, "sa": 2})):
        _check(_cost(op, **args), "scalar", 1, 10, "vector")


@pytest.mark.parametrize(("devices", "steps"), [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2)])
def test_ring_costs_by_hand(devices, steps):
    cfg = CFG.with_devices(devices)
    # bidirectional ring: ceil((D-1)/2) steps, each a 40-cycle hop plus the bytes at 8/cycle
    gather = _cost("ALLGATHER", cfg, base=0, slice=16, stride=64, count=3)
    _check(gather, "ring", max(1, steps * (40 + 3 * 16 * 2 / 8)), 0, "sync")
    _check(_cost("ARGMAXALL", cfg, rd=1, sd=1), "ring", max(1, steps * (40 + 8 / 8)), 0, "sync")
    _check(_cost("SYNC", cfg), "ring", max(1, steps * 40), 0, "sync")


def test_biased_mm_reads_its_bias_first():
    # 32 rows x 32 columns as in test_direct_mm_costs_stream_and_latency, plus the bias:
    # 32 rows / 8 per beat = 4 beats before the lanes start, so compute 36 > stream 32
    mm = {"dst": 0, "src": 1024, "w": 0, "ldb": 4, "rows": 32, "cols": 32, "ntok": 1,
          "dstride": 32, "sstride": 32}
    _check(_cost("MM", **mm, bias=2048, flags={"bias"}), "mpu", 36, 30, "compute",
           read=4 * 32 * 16)
    prefetched = _cost("MM", **mm, flags={"prefetched"})
    _check(prefetched, "mpu", 32, 10, "weights", read=4 * 32 * 16)


def test_prefetch_waits_for_a_descriptor_slot_before_any_mm():
    """The descriptor queue holds `prefetch_queue` (2) PREFETCHes until the streamer has
    requested each one's last beat, also before the first MM has consumed anything."""
    tl = Timeline(CFG)  # one beat per cycle per port, no burst gaps
    pf = Instr("PREFETCH", {"w": 0, "ldb": 4, "rows": 64, "cols": 32})  # 64 beats per port
    first, _ = _run(tl, pf)
    second, _ = _run(tl, Instr("PREFETCH", {"w": 4096, "ldb": 4, "rows": 64, "cols": 32}))
    third, _ = _run(tl, Instr("PREFETCH", {"w": 8192, "ldb": 4, "rows": 64, "cols": 32}))
    assert (first, second) == (0, 1)
    # the first matrix's 64 beats are requested by cycle 64, which frees the first slot
    assert third == 64
