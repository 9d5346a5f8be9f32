"""Project the latency of a full-size model on the accelerator from the timing model alone.

The compiled program runs through the instruction-level simulator with no arithmetic (timing
only), so the figures are projections of `hw/perf.py`, not measurements. Prefill runs on the
devices as matrix-matrix passes; decode is one token per pass, greedy.

The headline is the central case of the assumptions in `hw.config.ASSUMPTIONS` (clock, HBM
efficiency, ring hop), with the band from their optimistic to their pessimistic corner;
`--as-configured` takes the config's own values instead and reports no band.
"""

from __future__ import annotations

import json
from pathlib import Path

import models
from hw.config import load_config

from ..compiler import ModelShape
from ..errors import UsageError
from ..runtime.projection import MODEL_SHAPES, project, project_band

NAME = "perf"
HELP = "project prefill/decode latency of a full-size model (timing model)"


def add_arguments(p) -> None:
    p.add_argument("--model", default="gpt2-1.5b",
                   help=f"{', '.join(MODEL_SHAPES)} or a checkpoint directory (its config.json)")
    p.add_argument("--config", default="u280", help="tiny, u280, u55c or a JSON file")
    p.add_argument("--devices", type=int, default=1, help="FPGAs in the ring")
    p.add_argument("--input-len", type=int, default=64, help="prompt tokens")
    p.add_argument("--output-len", type=int, default=256, help="generated tokens")
    p.add_argument("--as-configured", action="store_true",
                   help="use the config's own clock, HBM efficiency and ring hop; no band")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def model_shape(spec: str) -> ModelShape:
    if spec in MODEL_SHAPES:
        return MODEL_SHAPES[spec]
    if not Path(spec).is_dir():
        raise UsageError(f"--model {spec!r} is neither a known model ({', '.join(MODEL_SHAPES)}) "
                         "nor a checkpoint directory")
    raw = models.checkpoint.read_config(spec)
    return ModelShape.from_config(models.GPT2Config.from_dict(raw))


def run(args) -> int:
    shape = model_shape(args.model)
    config = load_config(args.config, args.devices)
    run_projection = project if args.as_configured else project_band
    result = run_projection(shape, config, args.input_len, args.output_len)
    result["model_name"] = args.model
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model} on {args.devices} x {args.config} at {result['clock_mhz']:g} MHz, "
          f"{args.input_len} in / {args.output_len} out  [{result['label']}]")
    print(f"  prefill (first token) {result['prefill_ms']:9.2f} ms")
    print(f"  decode                {result['ms_per_token']:9.3f} ms/token   "
          f"(HBM floor {result['floor_ms_per_token']:.3f} ms/token)")
    print(f"  total                 {result['total_ms']:9.2f} ms")
    if result["breakdown"]:
        print(f"  decode HBM utilization {100 * result['hbm_utilization']:.1f}%, "
              f"{100 * result['roofline_fraction']:.1f}% of the roofline")
        parts = ", ".join(f"{k} {v:.3f}" for k, v in result["breakdown"].items() if v > 0)
        print(f"  decode ms/token by cause: {parts}")
    if "band" in result:
        print("  band (every assumption at its corner):")
        for corner, fig in result["band"].items():
            print(f"    {corner:<12} {fig['clock_mhz']:5g} MHz  decode {fig['ms_per_token']:.3f} "
                  f"ms/token  total {fig['total_ms']:9.2f} ms")
        used = ", ".join(f"{k} {a['value']:g} ({a['range'][0]:g}-{a['range'][1]:g})"
                         for k, a in result["assumptions"].items())
        print(f"  assumptions: {used}")
    return 0
