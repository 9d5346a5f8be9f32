# amaranth: UnusedElaboratable=no
"""FPGA resources: Yosys `synth_xilinx -family xcup` (UltraScale+, the U280's family), counting
LUTs, flip-flops, DSP slices, block RAMs and UltraRAMs.

    python scripts/resources.py [--width 16] [--units fp32_add,dot_lane] [--json]
    python scripts/resources.py --core tiny|u280|PATH [--parts] [--port-slice K] [--timeout S]

The first form synthesizes each arithmetic unit alone. `--core` synthesizes the whole kernel
(`rtl.kernel.Kernel` for the config, flattened); with `--parts` it synthesizes the core's
components one by one instead (controller, DMA, MPU, VPU, scalar unit, ring, vector buffer,
AXI ports, control registers) and adds them up, the AXI ports counted once per HBM port. With
`--port-slice K` the per-port engines (MPU, DMA) are synthesized for a K-port slice of the
config (K ports, K lanes, everything else unchanged) and multiplied by hbm_ports / K: an
estimate for configs too large to synthesize whole (their shared control logic is counted
hbm_ports / K times). A synthesis that runs past `--timeout` seconds is reported as such.

These are Yosys estimates (no placement, no timing closure); Vivado's numbers differ, typically
by tens of percent for LUTs.
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
from dataclasses import replace as dataclasses_replace
from pathlib import Path

from rtl import arith
from rtl.verilog import to_verilog

__all__ = ["U280_CAPACITY", "Resources", "core_parts", "count", "parse_stat", "synthesize",
           "synthesize_verilog", "units"]

#: XCU280 (Alveo U280) totals, from AMD's Alveo U280 data sheet (DS963): LUTs, flip-flops,
#: DSP48E2 slices, RAMB36E2 blocks, URAM288 blocks.
U280_CAPACITY = {"lut": 1_303_680, "ff": 2_607_360, "dsp": 9_024, "bram": 2_016, "uram": 960}

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
    uram: int = 0  #: URAM288 blocks
    copies: int = 1  #: times the part occurs in the core (`--parts`)


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
        return synthesize_verilog(name, source, name, yosys)


def synthesize_verilog(name: str, source: Path, top: str, yosys: str = "yosys",
                       timeout: float | None = None, uram: bool = False) -> Resources:
    """Synthesize module `top` of the Verilog file `source`; `uram` lets Yosys put large
    memories into UltraRAM. Raises `subprocess.TimeoutExpired` past `timeout` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "stat.txt"
        script = (f"read_verilog {source}; synth_xilinx -family xcup -top {top} -flatten "
                  f"-noiopad{' -uram' if uram else ''}; tee -q -o {report} stat")
        start = time.perf_counter()
        done = subprocess.run([yosys, "-q", "-p", script], capture_output=True, text=True,
                              timeout=timeout)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"yosys failed on {name}: {done.stderr.strip()[-2000:]}")
        cells = parse_stat(report.read_text())
    return count(name, cells, seconds)


def count(name: str, cells: dict[str, int], seconds: float = 0.0) -> Resources:
    """The resources of a `parse_stat` cell count."""
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
        uram=cells.get("URAM288", 0),
    )


def core_parts(cfg, port_slice: int | None = None) -> list[tuple[str, Callable, int]]:
    """(name, constructor, copies) of the core's components as `rtl.core.core.Core` builds
    them for `cfg`; with `port_slice` the MPU and DMA of a `port_slice`-port slice of `cfg`,
    `hbm_ports / port_slice` copies each."""
    import dataclasses

    from hw.regmap import regmap
    from rtl.axi_port import AxiPort
    from rtl.control import ControlRegs
    from rtl.core.controller import Controller
    from rtl.core.core import ADDR_WIDTH, vbuf_banks
    from rtl.core.dma import Dma
    from rtl.core.mpu import Mpu
    from rtl.core.ring import Ring
    from rtl.core.scalar import ScalarUnit
    from rtl.core.vbuf import Vbuf
    from rtl.core.vpu import Vpu

    P = cfg.hbm_ports
    ctrl = Controller(cfg)
    uop, bb, sbe = ctrl.uop, ctrl.block_bits, ctrl.sb_entries
    engine_cfg, copies = cfg, 1
    if port_slice is not None:
        if port_slice < 1 or P % port_slice:
            raise ValueError(f"port_slice must divide hbm_ports ({P}), not {port_slice}")
        engine_cfg = dataclasses.replace(cfg, hbm_ports=port_slice, mpu_lanes=port_slice)
        copies = P // port_slice

    def axi(readers):
        return lambda: AxiPort(addr_width=ADDR_WIDTH, data_width=cfg.hbm_port_width_bits,
                               readers=readers, max_burst=cfg.hbm_burst_beats, outstanding=8)

    parts = [
        ("controller", lambda: Controller(cfg), 1),
        ("dma", lambda: Dma(engine_cfg, uop, block_bits=bb, sb_entries=sbe,
                            addr_width=ADDR_WIDTH), copies),
        ("mpu", lambda: Mpu(engine_cfg, uop, block_bits=bb, sb_entries=sbe,
                            addr_width=ADDR_WIDTH), copies),
        ("vpu", lambda: Vpu(cfg, uop, block_bits=bb, sb_entries=sbe), 1),
        ("scalar", lambda: ScalarUnit(uop), 1),
        ("ring", lambda: Ring(cfg, uop, block_bits=bb, sb_entries=sbe), 1),
        ("vbuf", lambda: Vbuf(words=cfg.vbuf_words, align=cfg.align, banks=vbuf_banks(cfg),
                              readers=5 + P, writers=3 + P), 1),
        ("axi_port0", axi(4), 1),
        ("control", lambda: ControlRegs(regmap(cfg)), 1),
    ]
    if P > 1:
        parts.insert(8, ("axi_port", axi(3), P - 1))
    return parts


def _part_verilog(component, name: str) -> str:
    """Verilog of a core component as its own top: its signature's signals as ports, leaving out
    the constant members (the `ready` of an always-ready stream)."""
    from amaranth.back import verilog
    from amaranth.hdl import Signal, Value

    values = [Value.cast(value) for _, _, value in component.signature.flatten(component)]
    ports = [value for value in values if isinstance(value, Signal)]
    return verilog.convert(component, name=name, ports=ports, emit_src=False)


def _core(args, yosys: str) -> int:
    """`--core`: the whole kernel, or its parts; prints a table (or JSON) with the total."""
    from hw.config import ConfigError, load_config
    from rtl.build import KERNEL, kernel_verilog

    try:
        cfg = load_config(args.core)
        parts = core_parts(cfg, args.port_slice) if args.parts else None
        if parts is not None and args.only:
            wanted = args.only.split(",")
            unknown = sorted(set(wanted) - {name for name, _, _ in parts})
            if unknown:
                raise ValueError(f"unknown part(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(name for name, _, _ in parts)}")
            parts = [part for part in parts if part[0] in wanted]
    except (ConfigError, TypeError, ValueError) as err:
        print(f"resources.py: {err}", file=sys.stderr)
        return 2
    uram = cfg.vbuf_words * 16 > 8 * 2**20  # beyond 8 Mbit the buffer belongs in UltraRAM
    out = Path(args.out or Path(__file__).resolve().parent.parent / "build" / "resources"
               / cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    rows, missing = [], []
    start = time.perf_counter()
    if parts is None:
        jobs = [(KERNEL, lambda: kernel_verilog(cfg, out / f"{KERNEL}.v"), 1)]
    else:
        jobs = []
        for name, make, copies in parts:
            def write(name=name, make=make):
                path = out / f"{name}.v"
                text = _part_verilog(make(), name)
                if not path.is_file() or path.read_text() != text:
                    path.write_text(text)
                return path
            jobs.append((name, write, copies))
    for name, write, copies in jobs:
        try:
            used = synthesize_verilog(name, write(), name, yosys, args.timeout, uram)
        except subprocess.TimeoutExpired:
            missing.append(name)
            print(f"resources.py: {name} did not finish within {args.timeout:g} s",
                  file=sys.stderr)
            continue
        rows.append(dataclasses_replace(used, copies=copies))
        print(f"resources.py: {json.dumps(asdict(rows[-1]))}", file=sys.stderr, flush=True)
    total = {k: sum(getattr(r, k) * r.copies for r in rows)
             for k in ("lut", "lutram", "srl", "ff", "dsp", "bram", "uram", "carry")}
    wall = time.perf_counter() - start
    if args.json:
        print(json.dumps({"config": cfg.name, "parts": [asdict(r) for r in rows],
                          "total": total, "unfinished": missing, "seconds": round(wall, 1),
                          "u280": U280_CAPACITY}, indent=2))
        return 0 if not missing else 1
    print("| part | copies | LUT | LUTRAM | SRL | FF | DSP | BRAM36 | URAM | CARRY8 | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.unit} | {r.copies} | {r.lut} | {r.lutram} | {r.srl} | {r.ff} | {r.dsp} "
              f"| {r.bram:g} | {r.uram} | {r.carry} | {r.seconds:g} |")
    print(f"| **total** | | {total['lut']} | {total['lutram']} | {total['srl']} | {total['ff']} "
          f"| {total['dsp']} | {total['bram']:g} | {total['uram']} | {total['carry']} "
          f"| {wall:.0f} |")
    luts = total["lut"] + total["lutram"] + total["srl"]
    share = {"LUT": luts / U280_CAPACITY["lut"], "FF": total["ff"] / U280_CAPACITY["ff"],
             "DSP": total["dsp"] / U280_CAPACITY["dsp"],
             "BRAM36": total["bram"] / U280_CAPACITY["bram"],
             "URAM": total["uram"] / U280_CAPACITY["uram"]}
    print("U280 share: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in share.items()))
    if missing:
        print(f"unfinished within {args.timeout:g} s: {', '.join(missing)}")
    return 0 if not missing else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16,
                        help="elements per beat of the tree and lanes (default 16)")
    parser.add_argument("--units", help="comma-separated subset of the units")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--core", help="synthesize the kernel of this config (preset or JSON)")
    parser.add_argument("--parts", action="store_true",
                        help="with --core: synthesize the core's components one by one")
    parser.add_argument("--port-slice", type=int,
                        help="with --parts: MPU and DMA of this many ports, multiplied out")
    parser.add_argument("--only", help="with --parts: comma-separated subset of the parts")
    parser.add_argument("--timeout", type=float, default=1500.0,
                        help="seconds one synthesis may take (default 1500)")
    parser.add_argument("--out", help="with --core: where the Verilog goes "
                        "(default build/resources/<config>)")
    args = parser.parse_args(argv)
    yosys = shutil.which("yosys")
    if yosys is None:
        print("resources.py: no `yosys` on PATH: `apt-get install yosys` (make setup does)",
              file=sys.stderr)
        return 2
    if args.core:
        return _core(args, yosys)
    if args.port_slice is not None and not args.parts:
        print("resources.py: --port-slice needs --core and --parts", file=sys.stderr)
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
