"""`RtlCluster`: the RTL kernels under simulation, behind the same interface as `IsaCluster`.

`load` takes the compiler's programs and HBM images; `write_i32` / `read_i32` / `image` work on
the host's copies of the images, which go to the memory models when a run starts and come back
from their dumps when it ends, as a driver copies buffers to and from the card. `run()`
simulates the whole job in one go (a progress bar shows the simulated cycles) and yields once;
afterwards each device has its TOKOUT `events` and per-instruction `timeline`, read from the
testbench's trace, and `counters()` reports the measured cycles.

The program goes into HBM port 0 above everything the image holds, at `program_offset`, and its
address is the kernel's `program` argument, as the board driver will do it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hw.config import AccelConfig
from hw.hbm import HbmImage
from hw.intmath import ceil_div, round_up
from hw.isa import Instr, encode_program
from hw.isasim import IsaCluster
from hw.regmap import regmap
from sim import runner
from sim.core import top

from ..host_images import HostImages
from .timing import attribute

#: the smallest memory model (beats per HBM port, log2): one build serves every small model
MIN_DEPTH_LOG2 = 15

__all__ = ["RtlCluster", "RtlDevice", "RtlError", "parse_trace", "parse_writes"]

class RtlError(RuntimeError):
    """The simulated kernel faulted, did not finish, or left results that cannot be read."""


@dataclass
class RtlDevice:
    """One simulated kernel: its program, the TOKOUT events and the per-instruction timeline
    of its last run."""

    index: int
    program: list[Instr]
    events: list[tuple[int, int, dict]] = field(default_factory=list)
    #: (pc, issue cycle, done cycle) per executed instruction, in issue order
    timeline: list[tuple[int, int, int]] = field(default_factory=list)
    argmax_inputs: list | None = None
    argmax_pc: int | None = None  #: unused: only the `isa` simulator records logits
    cycles: int = 0  #: the kernel's `cycles` register: start to done, the loader included
    end: int = 0  #: the testbench cycle the run ended
    executed: int = 0
    #: (byte address, int32 value) of every write to the scalar area, in order
    writes: list[tuple[int, int]] = field(default_factory=list)


def parse_writes(text: str, beat: int) -> list[tuple[int, int]]:
    """(byte address, int32) of each 32-bit write in a memory model's write log."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "W":
            continue
        offset, strb, data = int(parts[2], 16), int(parts[3], 16), int(parts[4], 16)
        lanes = [k for k in range(beat // 4) if strb >> (4 * k) & 0xF]
        if len(lanes) != 1 or strb >> (4 * lanes[0]) & 0xF != 0xF:
            raise RtlError(f"a write to the scalar area with strobes {strb:#x} is not one token")
        value = data >> (32 * lanes[0]) & 0xFFFFFFFF
        out.append((offset + 4 * lanes[0], value - (1 << 32) if value >> 31 else value))
    return out


def parse_trace(text: str, program: list[Instr], start: int = 0) -> tuple[list, int]:
    """Issue and completion times of every executed instruction, from a testbench trace.

    Control instructions complete the cycle after they issue (the next instruction sees their
    result); every other instruction reports its completion, and instances of one pc complete
    in order. Returns ([(pc, issue, done)], the run's last cycle), cycles counted from `start`.
    """
    issues: list[list[int]] = []
    pending: dict[int, list[int]] = {}
    end = None
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "I":
            cycle, pc = int(parts[1]) - start, int(parts[2])
            if pc >= len(program):
                raise RtlError(f"trace issues pc {pc}, outside the program")
            entry = [pc, cycle, cycle + 1]
            issues.append(entry)
            if program[pc].op not in _CONTROL:
                pending.setdefault(pc, []).append(len(issues) - 1)
        elif parts[0] == "R":
            cycle, pc = int(parts[1]) - start, int(parts[2])
            queue = pending.get(pc)
            if not queue:
                raise RtlError(f"trace completes pc {pc} at cycle {cycle}, which is not running")
            issues[queue.pop(0)][2] = cycle + 1
        elif parts[0] == "D":
            end = int(parts[1]) - start
    left = [pc for pc, q in pending.items() if q]
    if left:
        raise RtlError(f"instructions at pcs {left[:5]} issued but never completed")
    if end is None:
        raise RtlError("the trace has no end of run")
    return [tuple(e) for e in issues], end


_CONTROL = {"NOP", "HALT", "LI", "ADDI", "ADD", "SUB", "MUL", "MULI", "MIN", "BLT", "BGE",
            "BEQ", "BNE", "JMP"}


class RtlCluster(HostImages):
    """The `rtl` backend's devices (see the module doc). `hbm_rate` and `link_rate` (out of 256)
    thin out the memory and link handshakes at random; 256 never stalls."""

    kind = "rtl"

    def __init__(self, config: AccelConfig, *, simulator: str = "verilator",
                 hbm_rate: int = 256, link_rate: int = 256, seed: int = 0,
                 progress: bool = False, depth_log2: int | None = None,
                 max_cycles: int = 50_000_000, work_dir: Path | None = None,
                 attribute: bool = False, hbm_bytes: int = 0, keep_runs: bool = False) -> None:
        self.config = config
        self.simulator = simulator
        self.hbm_rate = hbm_rate
        self.link_rate = link_rate
        self.seed = seed
        self.progress = progress
        # one build serves 1 and 2 devices (the kernel does not depend on the count); more
        # devices need a build of their own
        #: None: the memory models are sized from the loaded program (see `load`)
        self.depth_log2 = depth_log2
        #: bytes per HBM channel the program addresses (the plan's extent, KV cache included),
        #: beyond what the images hold
        self.hbm_bytes = hbm_bytes
        #: keep each run's folder (hex images, traces, sim.log) under build/rtl-runs
        self.keep_runs = keep_runs
        self.bench = top.Bench(config.with_devices(1), devices=max(2, config.devices),
                               depth_log2=depth_log2 or MIN_DEPTH_LOG2)
        self.max_cycles = max_cycles
        self.work_dir = Path(work_dir) if work_dir else None
        #: run the `isa` backend on the same job too, for the breakdown's category labels
        self.attribute = attribute
        self.reference: IsaCluster | None = None
        self.devices: list[RtlDevice] = []
        self.images: list[HbmImage] = []
        self.result: dict | None = None
        self._sim = None

    # -- Device protocol -------------------------------------------------------------------

    def load(self, programs: list[list[Instr]], images: list[HbmImage] | None) -> None:
        self._load(programs, images, RtlDevice)
        if self.depth_log2 is None:
            depth_log2 = max(MIN_DEPTH_LOG2, (self._beats_needed() - 1).bit_length())
            if depth_log2 != self.bench.depth_log2:
                self.bench = dataclasses.replace(self.bench, depth_log2=depth_log2)
                self._sim = None

    def _beats_needed(self) -> int:
        """The most beats any HBM port's memory model must hold: the image, the plan's extent
        and, in port 0, the program above the image."""
        beat = self.config.beat_bytes
        need = 1
        for d, dev in enumerate(self.devices):
            for p in range(self.config.hbm_ports):
                n = max(self.hbm_bytes, self.images[d].used_bytes(p))
                if p == 0:
                    n = max(n, self.program_offset(d) + encode_program(dev.program).nbytes)
                need = max(need, ceil_div(n, beat))
        return need

    def start(self) -> None:
        for dev in self.devices:
            dev.events = []
            dev.timeline = []

    def wait(self) -> None:
        for _ in self.run():
            pass

    def counters(self) -> dict:
        cycles = max(dev.cycles for dev in self.devices)
        return {"cycles": cycles, "instructions": [dev.executed for dev in self.devices]}

    # -- simulation ------------------------------------------------------------------------

    def _ensure_built(self):
        if self._sim is None:
            self._sim, self._build_dir = top.build(self.simulator, self.bench)
        return self._sim

    def _run_reference(self) -> IsaCluster:
        """The `isa` backend on the job as it stands (before the RTL changes the images)."""
        ref = IsaCluster(self.config)
        ref.load([dev.program for dev in self.devices], [im.copy() for im in self.images])
        ref.start()
        for dev in ref.devices:
            dev.trace = []
        ref.wait()
        return ref

    def run(self) -> Iterator[None]:
        sim = self._ensure_built()
        self.reference = self._run_reference() if self.attribute else None
        beat = self.config.beat_bytes
        depth = 1 << self.bench.depth_log2
        work = Path(tempfile.mkdtemp(prefix="run-", dir=self._runs_dir()))
        try:
            self._run_in(sim, work, beat, depth)
        finally:
            if not self.keep_runs:
                shutil.rmtree(work, ignore_errors=True)
        yield

    def _run_in(self, sim, work: Path, beat: int, depth: int) -> None:
        cfg = self.config
        rm = regmap(cfg)
        plusargs = [f"+hbm_rate={self.hbm_rate}", f"+link_rate={self.link_rate}",
                    f"+seed={self.seed}"]
        args = []
        offsets = []
        for d, dev in enumerate(self.devices):
            image = self.images[d].copy()
            offset = self.program_offset(d)
            words = encode_program(dev.program)
            image.write_bytes(0, offset, words.view(np.uint8).reshape(-1))
            offsets.append(offset)
            for p in range(cfg.hbm_ports):
                n = image.used_bytes(p)
                if ceil_div(max(n, self.hbm_bytes), beat) > depth:
                    raise RtlError(f"device {d} port {p} holds {n} bytes; the memory model has "
                                   f"{depth * beat} (raise depth_log2)")
                path = work / f"hbm{d}_{p}.hex"
                _write_hex(path, image.read_bytes(p, 0, round_up(n, beat)), beat)
                plusargs += [f"+hbm{d}_{p}={path}", f"+hbm{d}_{p}_out={work}/hbm{d}_{p}.out"]
            plusargs += [f"+trace{d}={work}/trace{d}.txt", f"+hbm{d}_0_log={work}/hbm{d}_0.log"]
            args.append({"program": top.hbm_base(0) + offset, "program_words": len(dev.program),
                         "device": d, "devices": len(self.devices),
                         **{f"hbm{p}": top.hbm_base(p) for p in range(cfg.hbm_ports)}})
        case = {"devices": len(self.devices), "built_devices": self.bench.devices,
                "args": args, "regmap": rm.to_dict(), "max_cycles": self.max_cycles,
                "progress": str(work / "progress.txt"), "result": str(work / "result.json")}
        self._simulate(sim, work, case, plusargs)
        result = json.loads((work / "result.json").read_text())
        self.result = result
        for d, dev in enumerate(self.devices):
            status = result["devices"][d]
            if status["fault"] & 0xFF:
                raise RtlError(f"device {d} faulted: code {status['fault'] & 0xFF} at pc "
                               f"{status['fault'] >> 8}")
            for p in range(cfg.hbm_ports):
                raw = _read_hex(work / f"hbm{d}_{p}.out", beat)
                if p == 0:  # the program is the driver's buffer, not part of the image
                    raw = raw[:offsets[d]]
                self.images[d].channels[p] = raw
            trace = (work / f"trace{d}.txt").read_text()
            dev.timeline, dev.end = parse_trace(trace, dev.program)
            dev.cycles = status["cycles"]
            dev.executed = len(dev.timeline)
            dev.writes = parse_writes((work / f"hbm{d}_0.log").read_text(), beat)
            dev.events = self._events(d, dev)
        self.work = work

    def _events(self, d: int, dev: RtlDevice) -> list[tuple[int, int, dict]]:
        """TOKOUT events as the `isa` backend reports them: (address, value, snapshot), the
        snapshot's cycles counted from the first instruction's issue."""
        tokouts = [i for i, (pc, _, _) in enumerate(dev.timeline)
                   if dev.program[pc].op == "TOKOUT"]
        if len(tokouts) != len(dev.writes):
            raise RtlError(f"device {d}: {len(tokouts)} TOKOUTs but {len(dev.writes)} "
                           "writes to the scalar area")
        snaps: list[dict[str, Any]]  # counter snapshots, as the isa devices' events hold them
        if self.reference is None:
            origin = dev.timeline[0][1]
            snaps = [{"cycles": float(dev.timeline[i][2] - origin)} for i in tokouts]
        else:
            ref = self.reference.devices[d]
            assert ref.trace is not None  # `_run_reference` traces every device
            try:
                attr = attribute(dev.timeline, ref.trace)
            except ValueError as e:
                raise RtlError(f"device {d}: {e}") from None
            snaps = [{"cycles": attr.finish[i], "breakdown": attr.breakdown[i],
                      "weight_bytes": event[2]["weight_bytes"], "kv_bytes": event[2]["kv_bytes"]}
                     for i, event in zip(tokouts, ref.events, strict=True)]
        return [(addr, value, snap)
                for (addr, value), snap in zip(dev.writes, snaps, strict=True)]

    def _runs_dir(self) -> Path:
        root = self.work_dir or (runner.REPO_ROOT / "build" / "rtl-runs")
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _simulate(self, sim, work: Path, case: dict, plusargs: list[str]) -> None:
        stop = threading.Event()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(desc="simulated cycles", unit=" cycles", unit_scale=True, leave=False)

            def poll():
                seen = 0
                while not stop.wait(0.5):
                    try:
                        now = int((work / "progress.txt").read_text() or 0)
                    except (OSError, ValueError):
                        continue
                    if now > seen:
                        bar.update(now - seen)
                        seen = now

            thread = threading.Thread(target=poll, daemon=True)
            thread.start()
        started = time.perf_counter()
        try:
            sim.test(test_module="sim.core.cocotb_run", hdl_toplevel=top.TOPLEVEL,
                     hdl_toplevel_lang="verilog", build_dir=str(self._build_dir),
                     test_dir=str(work), plusargs=plusargs, timescale=("1ns", "1ps"),
                     log_file=str(work / "sim.log"),
                     extra_env={"TANDEM_RUN": json.dumps(case),
                                "COCOTB_REWRITE_ASSERTION_FILES": "cocotb_*.py",
                                "PYTHONPATH": os.pathsep.join(
                                    [str(runner.REPO_ROOT), os.environ.get("PYTHONPATH", "")])})
        except SystemExit as e:
            raise RtlError(f"the simulation failed ({e}): {_last_line(work / 'sim.log')}"
                           f"{'' if self.keep_runs else ' (keep_runs=True keeps its folder)'}"
                           ) from None
        finally:
            stop.set()
            if bar is not None:
                bar.close()
        self.wall_s = time.perf_counter() - started
        if not (work / "result.json").is_file():
            raise RtlError(f"the simulation left no result: {_last_line(work / 'sim.log')}")


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return "no simulator log"
    return lines[-1][:300] if lines else "the simulator log is empty"


def _write_hex(path: Path, data: np.ndarray, beat: int) -> None:
    beats = np.asarray(data, np.uint8).reshape(-1, beat)[:, ::-1]  # most significant byte first
    path.write_text("".join(row.tobytes().hex() + "\n" for row in beats))


def _read_hex(path: Path, beat: int) -> np.ndarray:
    rows = []
    for line in path.read_text().splitlines():
        line = line.split("//")[0].strip()
        if not line or line.startswith("@"):
            continue
        if "x" in line.lower():
            raise RtlError(f"{path}: the memory model holds undefined bits ({line[:40]})")
        rows.append(bytes.fromhex(line.rjust(2 * beat, "0"))[::-1])
    return np.frombuffer(b"".join(rows), np.uint8).copy()
