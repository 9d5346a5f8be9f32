"""Timing-only projections for full-size models: the compiled program run by the `isa`
simulator with no arithmetic. Every figure is a projection of the timing model in `hw.perf`,
and is labelled so wherever it is printed.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from hw.config import ASSUMPTIONS, CORNERS, AccelConfig, at_corner
from hw.isasim import IsaCluster
from hw.layout import DESC
from hw.perf import CATEGORIES, hbm_utilization

from ..compiler import ModelShape, compile_model
from ..errors import UsageError

__all__ = ["BAND_KEYS", "MODEL_SHAPES", "project", "project_band"]


def _gpt2(n_embd: int, n_layer: int, n_head: int, n_inner: int) -> ModelShape:
    """A shape of the GPT-2 family: its vocabulary and 1024-position context."""
    return ModelShape(vocab_size=50257, n_positions=1024, n_embd=n_embd, n_layer=n_layer,
                      n_head=n_head, n_inner=n_inner)


#: Full-size models by name (shapes only: projections need no weights).
MODEL_SHAPES: dict[str, ModelShape] = {
    "gpt2-345m": _gpt2(n_embd=1024, n_layer=24, n_head=16, n_inner=4096),
    "gpt2-774m": _gpt2(n_embd=1280, n_layer=36, n_head=20, n_inner=5120),
    # GPT-2 XL (the real 1.5B): 25 heads of 64; on 4 devices the heads split 7/6/6/6
    "gpt2-1.5b": _gpt2(n_embd=1600, n_layer=48, n_head=25, n_inner=6400),
    # NOT GPT-2 XL: 1536 wide, 24 heads of 64 (7% fewer weight bytes), a shape 4 devices split
    # evenly; earlier projections called it "dfx-1.5b", but no source here confirms that DFX
    # ran this shape rather than XL, so DFX is compared with gpt2-1.5b
    "gpt2-1.5b-24h": _gpt2(n_embd=1536, n_layer=48, n_head=24, n_inner=6144),
}


def project(shape: ModelShape, config: AccelConfig, input_len: int, output_len: int,
            fast_forward: bool = True, pos0: int = 0) -> dict:
    """Latency of generating `output_len` tokens after an `input_len`-token prompt, from the
    timing model. The devices process the prompt from position `pos0` on (matrix-matrix
    passes) and then decode; `pos0` > 0 is the heterogeneous case, where the host has
    already written the KV cache of positions 0..pos0-1."""
    if input_len < 1 or output_len < 1:
        raise UsageError("input and output lengths must be at least 1")
    if not 0 <= pos0 < input_len:
        raise UsageError(f"pos0 must be in 0..{input_len - 1} (the devices process at least "
                         f"the last prompt token), not {pos0}")
    if input_len + output_len > shape.n_positions:
        raise UsageError(f"input ({input_len}) + output ({output_len}) exceeds the model's "
                         f"context of {shape.n_positions}")
    compiled = compile_model(shape, config)
    cluster = IsaCluster(config, functional=False, symmetric=True)
    cluster.load(compiled.programs, None)
    device = cluster.devices[0]
    if fast_forward:
        device.loop_hints = compiled.loop_hints(0)
    cluster.write_i32(0, DESC.N_PROMPT, [input_len])
    cluster.write_i32(0, DESC.POS0, [pos0])
    cluster.write_i32(0, DESC.MAX_NEW, [output_len])
    cluster.start()
    cluster.wait()
    out = DESC.out_tokens(shape.n_positions)
    snaps = [snap for addr, _, snap in device.events if addr >= out]
    ms = config.cycles_to_ms
    first, last = snaps[0], snaps[-1]
    decode_steps = len(snaps) - 1
    result: dict[str, Any] = {
        "label": "projection of the timing model (hw/perf.py), not a measurement",
        "model": asdict(shape),
        "config": config.name,
        "devices": config.devices,
        "clock_mhz": config.clock_mhz,
        "input_len": input_len,
        "output_len": output_len,
        "pos0": pos0,
        "prefill_ms": ms(first["cycles"]),
        "total_ms": ms(last["cycles"]),
        "ms_per_token": 0.0,
        "hbm_utilization": None,
        "breakdown": None,
        "floor_ms_per_token": (floor := shape.weight_bytes_fp16() / config.devices
                               / (config.hbm_peak_gbps * 1e9) * 1e3),
        # the floor at the bandwidth the HBM is assumed to deliver, not its peak
        "achievable_floor_ms_per_token": floor / config.hbm_efficiency,
        "prefill_chunk": compiled.plan.prefill_chunk,
    }
    if decode_steps:
        cycles = last["cycles"] - first["cycles"]
        moved = last["weight_bytes"] + last["kv_bytes"] - first["weight_bytes"] \
            - first["kv_bytes"]
        result["ms_per_token"] = ms(cycles) / decode_steps
        result["hbm_utilization"] = hbm_utilization(moved, cycles, config)
        result["breakdown"] = {k: ms(last["breakdown"][k] - first["breakdown"][k])
                               / decode_steps for k in CATEGORIES}
        result["roofline_fraction"] = result["floor_ms_per_token"] / result["ms_per_token"]
        result["achievable_fraction"] = (result["achievable_floor_ms_per_token"]
                                         / result["ms_per_token"])
    return result


#: The figures each corner of a band reports, under the same names as the top level.
BAND_KEYS = ("ms_per_token", "prefill_ms", "total_ms", "hbm_utilization", "roofline_fraction",
             "achievable_fraction", "clock_mhz")


def project_band(shape: ModelShape, config: AccelConfig, input_len: int, output_len: int,
                 pos0: int = 0) -> dict:
    """`project` at the central assumptions (`hw.config.ASSUMPTIONS`), with the band.

    The top level is the central corner; `band` holds the optimistic, central and pessimistic
    corners' figures (`BAND_KEYS`), each the whole projection re-run with every assumption
    at that corner; `assumptions` names the values the top level used, with their ranges and
    sources. The config's own values of the assumed fields are replaced."""
    runs = {corner: project(shape, at_corner(config, corner), input_len, output_len, pos0=pos0)
            for corner in CORNERS}
    result = dict(runs["central"])
    result["band"] = {corner: {k: run.get(k) for k in BAND_KEYS} for corner, run in runs.items()}
    result["assumptions"] = {
        a.name: {"value": a.central, "unit": a.unit, "range": [a.optimistic, a.pessimistic],
                 "source": a.source} for a in ASSUMPTIONS.values()}
    result["label"] += "; central assumptions, band over their ranges"
    return result
