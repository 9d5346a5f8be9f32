"""Compile a model for the accelerator and write what the devices load: per device the
program (`deviceK.bin`, 256-bit words, and `deviceK.s`, its assembly text), the HBM image per
bank (`deviceK_hbm/hbmNN.bin`, when the model has weights) and `symbols.json` (the plan: where
every buffer, matrix and KV-cache region lives).

--trace runs a job through the instruction-level simulator and writes `trace.csv` (one row per
executed instruction: pc, opcode, engine, issue and completion cycles, category) and
`trace_summary.txt` (cycles and exposed time by opcode), to show where the cycles go.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import models
from hw.config import load_config
from hw.isasim import IsaCluster
from hw.layout import DESC
from hw.outdir import output_dir

from ..compiler import compile_model
from ..errors import UsageError
from .options import add_output_arguments
from .perf import model_shape

NAME = "compile"
HELP = "compile a model into device programs, HBM images and symbols"


def add_arguments(p) -> None:
    p.add_argument("--model", default=str(models.default_model_dir()),
                   help="checkpoint directory (weights and all), or a named full-size model "
                        "(programs and symbols only)")
    p.add_argument("--config", default="tiny", help="tiny, u280, u55c or a JSON file")
    p.add_argument("--devices", type=int, default=1, help="FPGAs in the ring")
    add_output_arguments(p, "output directory")
    p.add_argument("--trace", action="store_true", help="also simulate a job and trace it")
    p.add_argument("--input-len", type=int, default=8, help="--trace: prompt tokens")
    p.add_argument("--output-len", type=int, default=4, help="--trace: generated tokens")


def run(args) -> int:
    config = load_config(args.config, args.devices)
    has_weights = Path(args.model).is_dir()
    inputs = [args.model if has_weights else None,
              args.config if Path(args.config).is_file() else None]
    with output_dir(args.out, NAME, inputs=inputs, force=args.force) as tmp:
        source = models.load_model(args.model) if has_weights else model_shape(args.model)
        compiled = compile_model(source, config)
        if args.trace:
            _check_trace_lengths(args.input_len, args.output_len,
                                 compiled.plan.shape.n_positions)
        written = compiled.save(tmp)
        summary = {"files": [str(Path(args.out) / p.relative_to(tmp)) for p in written],
                   "instructions": len(compiled.programs[0]), **compiled.plan.summary()}
        if args.trace:
            summary["trace"] = _trace(compiled, has_weights, args.input_len, args.output_len,
                                      tmp)
    print(json.dumps(summary, indent=2))
    return 0


def _check_trace_lengths(input_len: int, output_len: int, n_positions: int) -> None:
    if input_len < 1:
        raise UsageError(f"--input-len must be at least 1, not {input_len}")
    if output_len < 1:
        raise UsageError(f"--output-len must be at least 1, not {output_len}")
    if input_len + output_len > n_positions:
        raise UsageError(f"--input-len + --output-len ({input_len} + {output_len}) exceeds the "
                         f"model's context ({n_positions})")


def _trace(compiled, functional: bool, input_len: int, output_len: int, out: Path) -> dict:
    cluster = IsaCluster(compiled.config, functional=functional, symmetric=not functional)
    cluster.load(compiled.programs, compiled.images)
    device = cluster.devices[0]
    device.trace = []
    for d in range(len(cluster.devices)):
        cluster.write_i32(d, DESC.N_PROMPT, [input_len])
        cluster.write_i32(d, DESC.POS0, [0])
        cluster.write_i32(d, DESC.MAX_NEW, [output_len])
        cluster.write_i32(d, DESC.PROMPT, [i % compiled.plan.shape.vocab_size
                                           for i in range(1, input_len + 1)])
    cluster.start()
    cluster.wait()
    rows = device.trace
    by_op: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    with (out / "trace.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pc", "op", "engine", "issue", "done", "category"])
        for row in rows:
            writer.writerow([row["pc"], row["op"], row["engine"], row["start"], row["done"],
                             row["category"]])
            by_op[row["op"]][0] += 1
            by_op[row["op"]][1] += row["done"] - row["start"]
    lines = [f"{'op':10s} {'count':>8s} {'busy cycles':>14s}"]
    for op, (count, busy) in sorted(by_op.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{op:10s} {count:8d} {busy:14.0f}")
    lines.append(f"total cycles {device.timeline.cycles:.0f}; by cause: "
                 + ", ".join(f"{k} {v:.0f}" for k, v in device.timeline.breakdown.items()))
    (out / "trace_summary.txt").write_text("\n".join(lines) + "\n")
    return {"instructions_executed": len(rows), "cycles": device.timeline.cycles,
            "breakdown": device.timeline.breakdown}
