"""The timing model against the RTL, instruction by instruction: the data `hw/perf.py`'s
calibration comes from.

    python scripts/calibrate_timing.py [--devices 1 2] [--tokens 8] [--json FILE]

Runs the end-to-end test's job (a 1-layer GPT-2 on the `tiny` config, prompt of 4, greedy
tokens) on the Verilator build of the kernels and on the `isa` backend, and prints for each
device count the total cycles of both, the breakdown by category, and per opcode the mean
issue-to-done latency of each. The RTL cycles are measured; the model's are computed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host.runtime import GenerationRequest, make_backend
from host.runtime.rtl.timing import compare
from models.testing import hf_checkpoint


def measure(devices: int, tokens: int, model) -> list[dict]:
    rtl = make_backend("rtl", model, config="tiny", devices=devices)
    list(rtl.stream(GenerationRequest([3, 5, 7, 9], tokens)))
    return [compare(dev.timeline, rtl.cluster.reference.devices[d].trace)
            for d, dev in enumerate(rtl.cluster.devices)]


def report(devices: int, cmp: dict) -> str:
    lines = [f"## {devices} device(s), device 0: RTL {cmp['rtl_cycles']:.0f} cycles, model "
             f"{cmp['model_cycles']:.0f} (RTL/model {cmp['ratio']:.3f})", "",
             "| category | RTL | model | RTL - model |", "|---|---:|---:|---:|"]
    for k, v in cmp["rtl_breakdown"].items():
        m = cmp["model_breakdown"][k]
        lines.append(f"| {k} | {v:.0f} | {m:.0f} | {v - m:+.0f} |")
    lines += ["", "| opcode | count | RTL mean | model mean |", "|---|---:|---:|---:|"]
    for op, e in sorted(cmp["per_op"].items(), key=lambda x: -x[1]["rtl_cycles"]):
        lines.append(f"| {op} | {e['count']} | {e['rtl_cycles'] / e['count']:.2f} | "
                     f"{e['model_cycles'] / e['count']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    model = hf_checkpoint(Path(tempfile.mkdtemp(prefix="calibrate-")), vocab=97, n_pos=24,
                          n_embd=32, n_layer=1, n_head=2)
    results = {}
    for devices in args.devices:
        cmps = measure(devices, args.tokens, model)
        results[devices] = cmps
        print(report(devices, cmps[0]) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
