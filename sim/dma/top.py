"""The `AxiPort` build under test: its parameters and its simulation build."""

from __future__ import annotations

from pathlib import Path

from rtl.axi_port import AxiPort
from rtl.verilog import write_verilog

from .. import runner

__all__ = ["PARAMS", "TOPLEVEL", "build", "make_port"]

TOPLEVEL = "axi_port"
#: Small enough to hit every corner often: two read clients, short bursts, few outstanding.
PARAMS = {"addr_width": 32, "data_width": 128, "readers": 2, "max_burst": 16,
          "outstanding": 4, "len_width": 20}


def make_port() -> AxiPort:
    return AxiPort(**PARAMS)


def build(simulator: str, build_dir: Path):
    source = Path(build_dir) / f"{TOPLEVEL}.v"
    write_verilog(make_port(), source, TOPLEVEL)
    return runner.build(simulator, build_dir, [runner.for_simulator(simulator, source)],
                        TOPLEVEL)
