"""The timing model: what each instruction costs and when it may start.

A device is a controller that issues instructions in program order, at most one per cycle, to
engines that work in parallel: `ctrl` (registers and branches), `dma` (HBM <-> VBUF), `mpu` (the
dot-product lanes), `pref` (the weight prefetcher feeding the lanes' FIFOs), `vpu` (vector,
reduction and special-function pipelines), `scalar` (FP32 scalar unit) and `ring`.

An instruction issues once (1) the previous one has issued, (2) its engine can accept it, and
(3) its operands are ready under a scoreboard: a source (vector-buffer block, register, KV
matrix in HBM) is ready when its last writer has finished (RAW); a destination is free once its
last reader has read it (WAR) and its last writer has finished (WAW). An engine is pipelined: it
accepts the next instruction `occupancy` cycles after this one, and the results appear
`latency` cycles after that.

Which engine runs an instruction, which cost formula times it (its family), and what the
scoreboard tracks for it (registers, vector-buffer ranges, HBM matrices) are read off its
`hw.isa` table entry; this module holds one formula per cost family (`_COSTS`).

Costs (cycles; P ports, W values per beat, rate = sustained beats per cycle per port):
- MM of R rows x C columns for n tokens: each port streams ceil(R/P) rows of B = ceil(C/W)
  beats, dealt to its lanes, so each of the M lanes holds ceil(R/M) rows; a lane's adder loop
  needs `acc_interleave` (L) partial sums in flight, so it computes
  ceil(rows_per_lane / G) * B * max(L, G*n) cycles with G = ceil(L/n) rows per group. A direct
  MM streams its own rows. Weight MMs are prefetched: the prefetcher takes PREFETCH
  descriptors in order (up to `prefetch_queue` waiting) and streams them into one per-port FIFO
  of F = `prefetch_beats` beats. A matrix of N beats per port whose fetch started at s_f and
  that has B beats buffered when its MM starts ends at
      max(start + compute, s_f + stall + lat + N/rate, start + lat + (N - B)/rate)
  where `stall` is the time the FIFO stood full behind the previous matrix (see
  `Timeline._prefetched_stream`). Bursts cost `hbm_burst_gap_cycles` each.
- DMA: striped transfers move ceil(beats/P) beats per port, a row moves its beats through one
  port, a column append writes one beat per element, each a burst of its own.
- VPU: ceil(len/vector_width) beats (special functions ceil(len/sfu_width)) after
  `vpu_latency_cycles` (`sfu_latency_cycles`). VSUM and VDOT run one row through a dot lane,
  whose adder loop takes `acc_interleave` cycles per beat, and add `reduce_latency_cycles`;
  VMAX and ARGMAX (compare trees) take a beat per cycle and `reduce_latency_cycles`.
- A biased MM reads its bias vector (ceil(rows/align) beats) before the lanes start; a TOKOUT
  completes when the memory acknowledges the write.
- Ring (bidirectional): ceil((D-1)/2) steps, each a hop latency plus the slice's bytes at the
  link rate; all devices start a collective together, when the last one is ready.

Calibration: the pipeline depths (`*_latency_cycles`, `branch_penalty_cycles`) and the tiny
config's `hbm_burst_gap_cycles` are the RTL's, measured instruction by instruction against
the Verilator build (`python scripts/calibrate_timing.py`, which also checks totals within 5%).

The breakdown attributes each cycle of the run to the instruction whose completion advanced
the finishing time, so the categories sum to the total: `weights` (prefetched weight streaming),
`compute` (lanes compute-bound, as in prefill), `attention` (MMs streaming the KV cache),
`vector`, `sync` (ring), `dma`, `control`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .config import AccelConfig
from .intmath import ceil_div, round_up
from .isa import COSTS, ENGINES, OPCODES, OpSpec, Range

__all__ = [
    "CATEGORIES",
    "Cost",
    "Footprint",
    "Timeline",
    "footprint",
    "hbm_utilization",
    "mm_compute_cycles",
    "op_cost",
    "quantize",
]

CATEGORIES = ("weights", "compute", "attention", "vector", "sync", "dma", "control")
#: engines that take the next instruction only once this one has completed: the RTL's MPU
#: drains its lanes and writes every result first
_SERIAL_ENGINES = {"mpu"}


def quantize(cycles: float) -> float:
    """Times are kept on a 1/1024-cycle grid: sums of such values stay exact in float64 (up to
    2**43 cycles), so runs that take different but equivalent paths give identical times."""
    return round(cycles * 1024) / 1024


@dataclass
class Cost:
    engine: str
    occupancy: float
    latency: float
    category: str
    hbm_read_bytes: int = 0
    hbm_write_bytes: int = 0

    def __post_init__(self) -> None:
        self.occupancy = quantize(self.occupancy)
        self.latency = quantize(self.latency)


@dataclass
class Footprint:
    """What an instruction reads and writes, for the scoreboard."""

    vreads: list[tuple[int, int]] = field(default_factory=list)  # (word, count)
    vwrites: list[tuple[int, int]] = field(default_factory=list)
    rreads: list[int] = field(default_factory=list)
    rwrites: list[int] = field(default_factory=list)
    sreads: list[int] = field(default_factory=list)
    swrites: list[int] = field(default_factory=list)
    hreads: list[int] = field(default_factory=list)  # HBM matrices by base offset
    hwrites: list[int] = field(default_factory=list)
    vr_blocks: list[slice] = field(default_factory=list)  # filled by Timeline.prepare
    vw_blocks: list[slice] = field(default_factory=list)


def _mm_shape(v: dict, cfg: AccelConfig) -> tuple[int, int, int, int]:
    """(rows per port, rows per lane, beats per row, tokens) of an MM or PREFETCH."""
    rows = int(v["rows"])
    beats = ceil_div(int(v["cols"]), cfg.lane_width)
    ntok = int(v.get("ntok", 1))
    return (ceil_div(rows, cfg.hbm_ports), ceil_div(rows, cfg.mpu_lanes), beats, ntok)


def _stream_cycles(beats: int, cfg: AccelConfig) -> float:
    bursts = ceil_div(beats, cfg.hbm_burst_beats)
    return beats / cfg.port_beats_per_cycle + bursts * cfg.hbm_burst_gap_cycles


def mm_compute_cycles(rows_per_lane: int, beats: int, ntok: int, cfg: AccelConfig) -> int:
    lat = cfg.acc_interleave
    group = ceil_div(lat, ntok)
    return ceil_div(rows_per_lane, group) * beats * max(lat, group * ntok)


def _vector_beats(v: dict, cfg: AccelConfig, width: int) -> int:
    return ceil_div(round_up(int(v["len"]), cfg.align), width)


def _dma_bytes(spec: OpSpec, nbytes: int) -> tuple[int, int]:
    """(read, write) HBM bytes of a DMA transfer, its direction read off the ISA table."""
    return (nbytes if spec.hreads else 0, nbytes if spec.hwrites else 0)


def _dma_latency(cfg: AccelConfig) -> int:
    return cfg.dma_latency_cycles + cfg.hbm_latency_cycles


def _ctrl_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    return Cost(spec.engine, 1, 0, "control")


def _dma_word_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    # done when the memory answers (a TOKOUT when it acknowledges the write)
    return Cost(spec.engine, 1, _dma_latency(cfg), "dma", *_dma_bytes(spec, 4))


def _dma_stream_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    beats = _vector_beats(v, cfg, cfg.lane_width)
    occ = _stream_cycles(ceil_div(beats, cfg.hbm_ports), cfg)
    return Cost(spec.engine, occ, _dma_latency(cfg), "dma",
                *_dma_bytes(spec, beats * cfg.beat_bytes))


def _dma_row_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    beats = _vector_beats(v, cfg, cfg.lane_width)
    return Cost(spec.engine, _stream_cycles(beats, cfg), _dma_latency(cfg), "dma",
                *_dma_bytes(spec, beats * cfg.beat_bytes))


def _dma_column_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    n = round_up(int(v["len"]), cfg.align)
    per_port = ceil_div(n, cfg.hbm_ports)
    # every element is a write of its own (the column strides across rows)
    occ = per_port * (1 / cfg.port_beats_per_cycle + cfg.hbm_burst_gap_cycles)
    return Cost(spec.engine, occ, _dma_latency(cfg), "dma",
                *_dma_bytes(spec, n * cfg.beat_bytes))


def _mm_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    rows_per_port, rows_per_lane, beats, ntok = _mm_shape(v, cfg)
    compute = mm_compute_cycles(rows_per_lane, beats, ntok, cfg)
    if "bias" in v["flags"]:  # the bias vector is read before the lanes start
        compute += ceil_div(int(v["rows"]), cfg.align)
    fetched = rows_per_port * beats
    nbytes = cfg.hbm_ports * fetched * cfg.beat_bytes
    if "prefetched" in v["flags"]:  # the timeline composes this with its PREFETCH
        return Cost(spec.engine, compute, cfg.mpu_latency_cycles, "weights", nbytes)
    occ = max(compute, _stream_cycles(fetched, cfg))
    category = "compute" if compute >= occ else "attention"
    return Cost(spec.engine, occ, cfg.hbm_latency_cycles + cfg.mpu_latency_cycles, category,
                nbytes)


def _prefetch_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    return Cost(spec.engine, 1, 0, "weights")


def _elementwise_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    return Cost(spec.engine, _vector_beats(v, cfg, cfg.vector_width), cfg.vpu_latency_cycles,
                "vector")


def _sfu_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    return Cost(spec.engine, _vector_beats(v, cfg, cfg.sfu_width), cfg.sfu_latency_cycles,
                "vector")


def _sum_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    # one row on a dot lane: its adder loop takes acc_interleave per beat
    beats = _vector_beats(v, cfg, cfg.vector_width)
    return Cost(spec.engine, beats * cfg.acc_interleave,
                cfg.vpu_latency_cycles + cfg.reduce_latency_cycles, "vector")


def _reduction_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    # compare trees: a beat per cycle, no multiplier or adder stages
    return Cost(spec.engine, _vector_beats(v, cfg, cfg.vector_width),
                cfg.reduce_latency_cycles, "vector")


def _vpu_single_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    return Cost(spec.engine, 1, cfg.vpu_latency_cycles, "vector")


def _scalar_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    return Cost(spec.engine, 1, cfg.scalar_latency_cycles, "vector")


def _ring_cost(spec: OpSpec, nbytes: int, cfg: AccelConfig) -> Cost:
    steps = (cfg.devices - 1 + 1) // 2
    time = steps * (cfg.ring_hop_cycles + nbytes / cfg.ring_bytes_per_cycle)
    return Cost(spec.engine, max(1.0, time), 0, "sync")


def _allgather_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    return _ring_cost(spec, int(v["count"]) * int(v["slice"]) * 2, cfg)


def _ring_word_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    return _ring_cost(spec, 8, cfg)  # an FP32 scalar and a 32-bit index


def _barrier_cost(spec: OpSpec, v: dict, cfg: AccelConfig) -> Cost:
    return _ring_cost(spec, 0, cfg)


#: The formula of each cost family of `hw.isa.COSTS`; an opcode's family is in its table entry.
_COSTS: dict[str, Callable[[OpSpec, dict, AccelConfig], Cost]] = {
    "ctrl": _ctrl_cost,
    "dma-word": _dma_word_cost,
    "dma-stream": _dma_stream_cost,
    "dma-row": _dma_row_cost,
    "dma-column": _dma_column_cost,
    "mm": _mm_cost,
    "prefetch": _prefetch_cost,
    "elementwise": _elementwise_cost,
    "sfu": _sfu_cost,
    "sum": _sum_cost,
    "reduction": _reduction_cost,
    "vpu-single": _vpu_single_cost,
    "scalar": _scalar_cost,
    "allgather": _allgather_cost,
    "ring-word": _ring_word_cost,
    "barrier": _barrier_cost,
}
assert set(_COSTS) == set(COSTS), "every cost family of hw.isa needs its formula here"


def op_cost(op: str, v: dict, cfg: AccelConfig) -> Cost:
    """Cost of one instruction with resolved operand values `v` (see `hw.isa.resolve`)."""
    spec = OPCODES.get(op)
    if spec is None:
        raise ValueError(f"no timing for opcode {op}")
    return _COSTS[spec.cost](spec, v, cfg)


@dataclass(frozen=True)
class _Touches:
    """What an opcode's table entry says it touches, in the form `footprint` reads."""

    rreads: tuple[str, ...]
    rwrites: tuple[str, ...]
    sreads: tuple[str, ...]
    swrites: tuple[str, ...]
    vreads: tuple[Range, ...]
    vwrites: tuple[Range, ...]
    hreads: tuple[Range, ...]  # the HBM matrices the scoreboard orders
    hwrites: tuple[Range, ...]

    @classmethod
    def of(cls, spec: OpSpec) -> _Touches:
        def matrices(ranges: tuple[Range, ...]) -> tuple[Range, ...]:
            return tuple(r for r in ranges if r.space == "matrix")

        return cls(spec.registers("reg", "r"), spec.registers("reg", "w"),
                   spec.registers("sreg", "r"), spec.registers("sreg", "w"),
                   spec.vreads, spec.vwrites, matrices(spec.hreads), matrices(spec.hwrites))


_TOUCHES = {op: _Touches.of(spec) for op, spec in OPCODES.items()}
_NO_FLAGS: frozenset[str] = frozenset()


def footprint(op: str, v: dict, cfg: AccelConfig) -> Footprint:
    """Scoreboard resources of an instruction, read off its `hw.isa` table entry: the
    registers it reads and writes, its vector-buffer ranges (rounded as the table says) and
    the HBM matrices it reads and writes, by base offset (the other HBM spaces are ordered by
    the program, see `hw.isa.SPACES`). Index registers are the caller's (`Timeline.ready`)."""
    t = _TOUCHES[op]
    align, devices = cfg.align, cfg.devices
    flags = v.get("flags", _NO_FLAGS)

    def up(x: int) -> int:
        return round_up(int(x), align)

    def vranges(ranges: tuple[Range, ...]) -> list[tuple[int, int]]:
        return [(int(v[r.start]), int(r.size(v, up, devices)))
                for r in ranges if r.enabled(flags)]

    return Footprint(
        vreads=vranges(t.vreads), vwrites=vranges(t.vwrites),
        rreads=[v[n] for n in t.rreads], rwrites=[v[n] for n in t.rwrites],
        sreads=[v[n] for n in t.sreads], swrites=[v[n] for n in t.swrites],
        hreads=[int(v[r.start]) for r in t.hreads if r.enabled(flags)],
        hwrites=[int(v[r.start]) for r in t.hwrites if r.enabled(flags)])


@dataclass
class _Prefetch:
    issue: float  # when its PREFETCH issued
    beats: int  # beats per port
    key: tuple  # (w, ldb, rows, cols): the MM that consumes it must match
    fetch_start: float = 0.0  # when the prefetcher began fetching it (set when consumed)
    fetch_end: float = 0.0  # when it requested the last beat
    consume_start: float = 0.0  # when its MM started


class Timeline:
    """One device's issue timeline and scoreboard; also accumulates the breakdown."""

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        self.block = cfg.align
        blocks = ceil_div(cfg.vbuf_words, self.block) + 1
        self.v_write = np.zeros(blocks)  # when the last write of a block completes
        self.v_read = np.zeros(blocks)  # when the last read of a block is done
        self.r_ready = [0.0] * 16
        self.s_ready = [0.0] * 16
        self.h_write: dict[int, float] = {}
        self.engine_free = dict.fromkeys(ENGINES, 0.0)
        self.next_issue = 0.0
        self.finish = 0.0  # latest completion so far
        self.breakdown = dict.fromkeys(CATEGORIES, 0.0)
        self.busy = dict.fromkeys(self.engine_free, 0.0)
        self.hbm_read_bytes = 0
        self.hbm_write_bytes = 0
        self.weight_bytes = 0
        self.kv_bytes = 0
        self.prefetch: list[_Prefetch] = []  # issued, not yet consumed, oldest first
        self.consumed: _Prefetch | None = None  # the last prefetched matrix an MM consumed

    def _blocks(self, start: int, count: int) -> slice:
        return slice(start // self.block, ceil_div(start + count, self.block))

    def _prefetched_stream(self, pf: _Prefetch, start: float) -> float:
        """When the last beat of prefetched matrix `pf` reaches its MM, which starts at `start`.

        The prefetcher fetches matrices in order into one FIFO of F beats per port. It starts
        `pf` once it has requested the previous one, and stalls while the FIFO is full: before
        the previous matrix's MM starts, that matrix occupies min(N_prev, F) of the FIFO; once
        it starts, the lanes (at least as fast as the port) free space as it arrives. Beats
        still missing when `pf`'s MM starts arrive at the port's rate after the HBM latency.
        """
        cfg = self.cfg
        lat, cap = cfg.hbm_latency_cycles, cfg.prefetch_beats
        n = pf.beats
        stream = quantize(_stream_cycles(n, cfg))
        rate = n / stream if stream else 1.0
        prev = self.consumed
        fetch_start = pf.issue if prev is None else max(pf.issue, prev.fetch_end)
        stall = 0.0
        if prev is not None and fetch_start < prev.consume_start:
            room = max(0, cap - min(prev.beats, cap))  # free FIFO space before prev drains
            full_at = fetch_start + quantize(room / rate)
            stall = max(0.0, prev.consume_start - full_at)
        buffered = min(n, cap, max(0.0, rate * (start - fetch_start - stall)))
        rest = quantize((n - buffered) / rate)
        pf.fetch_start, pf.consume_start = fetch_start, start
        pf.fetch_end = max(fetch_start + stall + stream, start + rest)
        return max(fetch_start + stall + lat + stream, start + lat + rest)

    def _descriptor_slot(self) -> float:
        """When the prefetcher's descriptor queue has room: it holds `prefetch_queue`
        descriptors, each until the streamer has requested its matrix's last beat. A matrix
        that fits the FIFO is requested without waiting for its MM; a larger one is not done
        before its MM starts, which comes later in program order, so it is not waited for."""
        cfg = self.cfg
        ends = []
        prev = self.consumed.fetch_end if self.consumed is not None else 0.0
        if self.consumed is not None:
            ends.append(prev)
        for pf in self.prefetch:
            if pf.beats > cfg.prefetch_beats:
                return 0.0
            prev = max(pf.issue, prev) + quantize(_stream_cycles(pf.beats, cfg))
            ends.append(prev)
        # the streamer requests matrices in order, so `ends` is sorted: the queue has room
        # once all but prefetch_queue - 1 of them are requested
        if len(ends) < cfg.prefetch_queue:
            return 0.0
        return ends[len(ends) - cfg.prefetch_queue]

    def prepare(self, fp: Footprint) -> Footprint:
        """Convert the vector ranges to scoreboard blocks once (footprints are cached)."""
        fp.vr_blocks = [self._blocks(s, n) for s, n in fp.vreads]
        fp.vw_blocks = [self._blocks(s, n) for s, n in fp.vwrites]
        return fp

    def ready(self, cost: Cost, fp: Footprint, index_regs: list[int]) -> float:
        """Earliest cycle this instruction may issue (`fp` prepared)."""
        t = max(self.next_issue, self.engine_free[cost.engine])
        if cost.engine == "pref":
            t = max(t, self._descriptor_slot())
        r_ready, s_ready = self.r_ready, self.s_ready
        for r in fp.rreads:
            t = max(t, r_ready[r])
        for r in index_regs:
            t = max(t, r_ready[r])
        for r in fp.rwrites:
            t = max(t, r_ready[r])
        for s in fp.sreads:
            t = max(t, s_ready[s])
        for s in fp.swrites:
            t = max(t, s_ready[s])
        for b in fp.vr_blocks:
            t = max(t, self.v_write[b].max())
        for b in fp.vw_blocks:
            t = max(t, self.v_write[b].max(), self.v_read[b].max())
        for key in fp.hreads:
            t = max(t, self.h_write.get(key, 0.0))
        return float(t)

    def commit(self, op: str, v: dict, cost: Cost, fp: Footprint, start: float,
               taken_branch: bool = False) -> float:
        """Record the instruction as issued at `start`; return when its results are ready."""
        cfg = self.cfg
        occupancy, category = cost.occupancy, cost.category
        engine_start = start
        family = OPCODES[op].cost
        prefetched = family == "mm" and "prefetched" in v["flags"]
        if family == "prefetch":
            rows_per_port, _, beats, _ = _mm_shape(v, cfg)
            key = (int(v["w"]), v["ldb"], int(v["rows"]), int(v["cols"]))
            self.prefetch.append(_Prefetch(start, rows_per_port * beats, key))
        elif prefetched:
            pf = self.prefetch.pop(0)
            end_stream = self._prefetched_stream(pf, start)
            end = max(start + cost.occupancy, end_stream)
            occupancy = end - start
            category = "compute" if start + cost.occupancy > end_stream else "weights"
            self.busy["pref"] += quantize(_stream_cycles(pf.beats, cfg))
            self.consumed = pf
        done = start + occupancy + cost.latency
        if cost.engine in _SERIAL_ENGINES:
            self.engine_free[cost.engine] = done
        else:
            # the prefetcher takes the next descriptor at once (`_descriptor_slot` limits it)
            self.engine_free[cost.engine] = engine_start + (0 if family == "prefetch"
                                                            else occupancy)
        self.busy[cost.engine] += occupancy
        self.next_issue = start + 1 + (cfg.branch_penalty_cycles if taken_branch else 0)
        for r in fp.rwrites:
            self.r_ready[r] = done
        for s in fp.swrites:
            self.s_ready[s] = done
        for b in fp.vr_blocks:
            np.maximum(self.v_read[b], start + occupancy, out=self.v_read[b])
        for b in fp.vw_blocks:
            self.v_write[b] = done
        for matrix in fp.hwrites:
            self.h_write[matrix] = done
        self.hbm_read_bytes += cost.hbm_read_bytes
        self.hbm_write_bytes += cost.hbm_write_bytes
        if family == "mm":
            if prefetched:
                self.weight_bytes += cost.hbm_read_bytes
            else:
                self.kv_bytes += cost.hbm_read_bytes
        if done > self.finish:
            self.breakdown[category] += done - self.finish
            self.finish = done
        return done

    @property
    def cycles(self) -> float:
        return self.finish

    # -- loop fast-forward (timing-only runs) ------------------------------------------------

    def relative_state(self, t: float) -> tuple:
        """Everything that can still delay instructions issued from cycle `t` on, relative to
        `t`. Two equal states followed by the same instructions time them the same."""

        def rel(x: float) -> float:
            return x - t if x > t else 0.0

        def pending(arr: np.ndarray) -> tuple:
            idx = np.flatnonzero(arr > t)
            return tuple(idx.tolist()), tuple((arr[idx] - t).tolist())

        def seg(pf: _Prefetch) -> tuple:
            return (rel(pf.issue), rel(pf.fetch_end), rel(pf.consume_start), pf.beats,
                    pf.key[1:])

        return (
            rel(self.next_issue), rel(self.finish),
            tuple(rel(x) for x in self.engine_free.values()),
            tuple(rel(x) for x in self.r_ready), tuple(rel(x) for x in self.s_ready),
            pending(self.v_write), pending(self.v_read),
            tuple(sorted(rel(x) for x in self.h_write.values() if x > t)),
            tuple(seg(pf) for pf in self.prefetch),
            None if self.consumed is None else seg(self.consumed),
        )

    def counters(self) -> dict:
        return {"breakdown": dict(self.breakdown), "busy": dict(self.busy),
                "hbm_read_bytes": self.hbm_read_bytes, "hbm_write_bytes": self.hbm_write_bytes,
                "weight_bytes": self.weight_bytes, "kv_bytes": self.kv_bytes}

    def fast_forward(self, t: float, shift: float, delta: dict, times: int,
                     prefetch_w_step: int = 0) -> None:
        """Advance as if `times` more iterations, each lasting `shift` cycles and adding
        `delta` (a `counters()` difference), ran from cycle `t`."""
        total = shift * times

        def moved(x: float) -> float:
            return x + total if x > t else x

        # the issue point and the finish line always move: each iteration advanced the finish
        # by exactly its period, which is what the breakdown delta adds up to
        self.next_issue += total
        self.finish += total
        self.engine_free = {k: moved(x) for k, x in self.engine_free.items()}
        self.r_ready = [moved(x) for x in self.r_ready]
        self.s_ready = [moved(x) for x in self.s_ready]
        for arr in (self.v_write, self.v_read):
            arr[arr > t] += total
        self.h_write = {k: moved(x) for k, x in self.h_write.items()}
        def shifted(pf: _Prefetch) -> _Prefetch:
            key = (pf.key[0] + prefetch_w_step * times, *pf.key[1:])
            return _Prefetch(moved(pf.issue), pf.beats, key, moved(pf.fetch_start),
                             moved(pf.fetch_end), moved(pf.consume_start))

        self.prefetch = [shifted(pf) for pf in self.prefetch]
        if self.consumed is not None:
            self.consumed = shifted(self.consumed)
        for name, value in delta["breakdown"].items():
            self.breakdown[name] += value * times
        for name, value in delta["busy"].items():
            self.busy[name] += value * times
        for name in ("hbm_read_bytes", "hbm_write_bytes", "weight_bytes", "kv_bytes"):
            setattr(self, name, getattr(self, name) + delta[name] * times)

    def snapshot(self) -> dict:
        return {"cycles": self.finish, "breakdown": dict(self.breakdown),
                "weight_bytes": self.weight_bytes, "kv_bytes": self.kv_bytes}


def hbm_utilization(weight_and_kv_bytes: float, cycles: float, cfg: AccelConfig) -> float:
    """Share of the HBM roofline (all ports' peak) that a stretch of `cycles` achieved."""
    if cycles <= 0:
        return 0.0
    seconds = cycles / (cfg.clock_mhz * 1e6)
    return weight_and_kv_bytes / (seconds * cfg.hbm_peak_gbps * 1e9)

