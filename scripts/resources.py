"""FPGA resources of each arithmetic unit: Yosys `synth_xilinx -family xcup` (UltraScale+, the
U280's family), counting LUTs, flip-flops, DSP slices and block RAMs.

    python scripts/resources.py [--width 16] [--units fp32_add,dot_lane] [--json]

These are Yosys estimates of each unit alone (no placement, no timing closure); Vivado's
numbers differ, typically by tens of percent for LUTs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rtl import arith
from rtl.verilog import to_verilog

__all__ = ["Resources", "parse_stat", "synthesize", "units"]

_LUTS = re.compile(r"^LUT[1-6]$")
_FFS = {"FDRE", "FDSE", "FDCE", "FDPE"}
_LUTRAM = re.compile(r"^RAM(32|64|128|256)[XM]")
_SRL = {"SRL16E", "SRLC32E"}


@dataclass(frozen=True)
class Resources:
    unit: str
    lut: int  #: logic LUTs (LUT1..LUT6)
    lutram: int  #: LUTs used as distributed RAM/ROM cells
    srl: int  #: LUTs used as shift registers
    ff: int  #: flip-flops
    dsp: int  #: DSP48E2 slices
    bram: float  #: RAMB36E2 equivalents (a RAMB18E2 counts 0.5)
    carry: int  #: CARRY8 blocks
    seconds: float  #: synthesis time


def units(width: int) -> dict[str, Callable]:
    """Unit name -> constructor, the vector units at `width` elements per beat."""
    return {
        "fp16_mul": arith.Fp16Multiplier,
        "fp32_mul": arith.Fp32Multiplier,
        "fp32_add": arith.Fp32Adder,
        "fp32_to_fp16": arith.Fp32ToFp16,
        "fp16_to_fp32": arith.Fp16ToFp32,
        f"adder_tree{width}": lambda: arith.AdderTree(width),
        f"sum_lane{width}": lambda: arith.SumLane(width),
        f"dot_lane{width}": lambda: arith.DotLane(width),
        f"max_lane{width}": lambda: arith.MaxLane(width),
        "exp": arith.Exp,
        "reciprocal": arith.Reciprocal,
        "rsqrt": arith.Rsqrt,
        "gelu": arith.Gelu,
    }


def parse_stat(text: str) -> dict[str, int]:
    """Cell counts of the last `stat` report in Yosys's output."""
    start = text.rfind("Number of cells:")
    if start < 0:
        raise ValueError("no `stat` report in the Yosys output")
    cells: dict[str, int] = {}
    for line in text[start:].splitlines()[1:]:
        match = re.match(r"^\s+(\S+)\s+(\d+)\s*$", line)
        if match:
            cells[match[1]] = int(match[2])
        elif cells and line.strip():
            break
    return cells


def synthesize(name: str, make: Callable, yosys: str = "yosys") -> Resources:
    """Synthesize one unit for UltraScale+ and count what it uses."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{name}.v"
        source.write_text(to_verilog(make(), name))
        report = Path(tmp) / "stat.txt"
        script = (f"read_verilog {source}; synth_xilinx -family xcup -top {name} -flatten; "
                  f"tee -q -o {report} stat")
        start = time.perf_counter()
        done = subprocess.run([yosys, "-q", "-p", script], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"yosys failed on {name}: {done.stderr.strip()[-2000:]}")
        cells = parse_stat(report.read_text())
    return Resources(
        unit=name,
        lut=sum(n for c, n in cells.items() if _LUTS.match(c)),
        lutram=sum(n for c, n in cells.items() if _LUTRAM.match(c)),
        srl=sum(n for c, n in cells.items() if c in _SRL),
        ff=sum(n for c, n in cells.items() if c in _FFS),
        dsp=sum(n for c, n in cells.items() if c.startswith("DSP48E2")),
        bram=cells.get("RAMB36E2", 0) + 0.5 * cells.get("RAMB18E2", 0),
        carry=cells.get("CARRY8", 0),
        seconds=round(seconds, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16,
                        help="elements per beat of the tree and lanes (default 16)")
    parser.add_argument("--units", help="comma-separated subset of the units")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    yosys = shutil.which("yosys")
    if yosys is None:
        print("resources.py: no `yosys` on PATH: `apt-get install yosys` (make setup does)",
              file=sys.stderr)
        return 2
    try:
        table = units(args.width)
    except (TypeError, ValueError) as err:
        print(f"resources.py: {err}", file=sys.stderr)
        return 2
    chosen = list(table) if not args.units else args.units.split(",")
    unknown = [u for u in chosen if u not in table]
    if unknown:
        print(f"resources.py: unknown unit(s) {', '.join(unknown)}; known: {', '.join(table)}",
              file=sys.stderr)
        return 2
    rows = [synthesize(name, table[name], yosys) for name in chosen]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print("| unit | LUT | LUTRAM | SRL | FF | DSP | BRAM36 | CARRY8 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.unit} | {r.lut} | {r.lutram} | {r.srl} | {r.ff} | {r.dsp} | {r.bram:g} "
              f"| {r.carry} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
