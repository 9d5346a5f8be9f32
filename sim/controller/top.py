"""The `Controller` build under test: the TINY config's controller (its instruction memory,
registers, scoreboard and issue logic) as the core builds it. The testbench writes the program
through `imem_write`, plays every engine (micro-op streams in, register write-backs and
scoreboard releases out) and the run-state inputs (`engines_idle`, `hbm_writes_pending`).
"""

from __future__ import annotations

from pathlib import Path

from hw.config import TINY
from rtl.core.controller import Controller
from rtl.verilog import write_verilog

from .. import runner

__all__ = ["CONFIG", "TOPLEVEL", "build", "make_controller"]

TOPLEVEL = "controller"
CONFIG = TINY


def make_controller() -> Controller:
    return Controller(CONFIG)


def build(simulator: str, build_dir: Path):
    source = Path(build_dir) / f"{TOPLEVEL}.v"
    write_verilog(make_controller(), source, TOPLEVEL)
    return runner.build(simulator, build_dir, [runner.for_simulator(simulator, source)],
                        TOPLEVEL)
