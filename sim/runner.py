"""Build and run cocotb simulations through cocotb's Python runner, the same way on Icarus and
Verilator.

Designs here generate their clock in HDL (`always #5 clk = ~clk`), so a simulation runs
without Python in every cycle; Verilator therefore builds with `--timing`. A build directory
is reused while its sources are unchanged (Verilator's make is incremental, Icarus recompiles
in well under a second).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .toolchain import available_simulators, ensure_verilator_env, verilator_make_flags

__all__ = ["REPO_ROOT", "SIMULATORS", "build", "for_simulator", "run"]

REPO_ROOT = Path(__file__).resolve().parent.parent
SIMULATORS = ("verilator", "icarus")

_BUILD_ARGS = {
    # Amaranth's output trips Verilator's lint; the HDL clock needs the timing scheduler.
    "verilator": ["-Wno-fatal", "-Wno-lint", "-Wno-style", "--timing"],
    "icarus": [],
}


_ZERO_INIT = re.compile(r"^\s+[^\s\[]+\[\d+\] = \d+'[hd]0+;\n", re.MULTILINE)


def for_simulator(simulator: str, source: Path) -> Path:
    """`source` with its combinational blocks written `always_comb`, for either simulator.

    Yosys writes combinational logic as `always @*` and relies on an initialised dummy register
    to run each block once at time 0. Icarus does not treat a declaration's initialiser as an
    event, so a block whose inputs never change (a ready that only depends on a register held
    in reset) stays X; Verilator never runs a block that reads no variable (a constant field of
    a struct), so the constant is lost. `always_comb` runs at time 0 by definition on both.
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    source = Path(source)
    patched = source.with_suffix(".sim.v")
    text = source.read_text().replace("always @*", "always_comb")
    if simulator == "verilator":
        # Verilator starts every variable at zero; memories initialised to zero element by
        # element (Amaranth always writes them out) only cost minutes of C++ generation
        text = _ZERO_INIT.sub("", text)
    if not patched.is_file() or patched.read_text() != text:
        patched.write_text(text)
    return patched


def _verilator_runner():
    from cocotb_tools.runner import Verilator

    class _Verilator(Verilator):
        """cocotb's Verilator runner without --public-flat-rw.

        That flag registers every signal of the design with VPI and stops Verilator from
        optimizing any of them away; for Amaranth's many internal signals it more than doubles
        the C++ to compile. Testbenches here touch only the top module's ports, which
        --public-depth 1 keeps visible.
        """

        def _build_command(self):
            commands = super()._build_command()
            flags = [arg for arg in commands[0] if arg != "--public-flat-rw"]
            commands[0] = [flags[0], "--public-depth", "1", *flags[1:]]
            return commands

    return _Verilator()


def _runner(simulator: str):
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    reason = available_simulators()[simulator]
    if reason:
        raise RuntimeError(reason)
    if simulator == "verilator":
        ensure_verilator_env()
        return _verilator_runner()
    from cocotb_tools.runner import get_runner

    return get_runner(simulator)


def build(simulator: str, build_dir: Path, sources: Sequence[Path], toplevel: str,
          includes: Sequence[Path] = (), extra_args: Sequence[str] = (),
          cxx_opt: str | None = None, log_file: Path | None = None):
    """Compile `sources` with `toplevel` as the top module; returns the cocotb runner.
    `extra_args` go to the simulator's compiler after the defaults; `cxx_opt` (Verilator
    only, e.g. "-O0") replaces the C++ optimization of the model's code, for designs whose
    compile time outweighs their run time. `log_file` takes the build's output instead of
    stdout."""
    runner = _runner(simulator)
    # cocotb's runner passes os.environ on to make; MAKEFLAGS is set only for the build.
    saved = os.environ.get("MAKEFLAGS")
    if simulator == "verilator":
        opt = f"OPT_FAST={cxx_opt}" if cxx_opt else ""
        os.environ["MAKEFLAGS"] = " ".join(filter(None, [saved, verilator_make_flags(), opt]))
    try:
        runner.build(
            sources=[str(s) for s in sources],
            includes=[str(i) for i in includes],
            hdl_toplevel=toplevel,
            build_dir=str(build_dir),
            build_args=[*_BUILD_ARGS[simulator], *extra_args],
            timescale=("1ns", "1ps"),
            log_file=None if log_file is None else str(log_file),
        )
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    return runner


def run(runner, build_dir: Path, toplevel: str, test_module: str, *,
        plusargs: Sequence[str] = (), env: Mapping[str, str] | None = None,
        test_dir: Path | None = None, testcase: str | None = None) -> Path:
    """Run the cocotb tests of `test_module` (only `testcase`, when given) on a built design;
    returns the results file.

    Under pytest a failing cocotb test raises SystemExit (cocotb's runner does that)."""
    extra_env = {
        # Rewriting asserts only in our cocotb modules keeps imports in the simulator fast.
        "COCOTB_REWRITE_ASSERTION_FILES": "cocotb_*.py",
        "COCOTB_RANDOM_SEED": os.environ.get("COCOTB_RANDOM_SEED", "1"),
        **(env or {}),
    }
    return runner.test(
        test_module=test_module,
        hdl_toplevel=toplevel,
        hdl_toplevel_lang="verilog",
        build_dir=str(build_dir),
        test_dir=str(test_dir or build_dir),
        testcase=testcase,
        plusargs=list(plusargs),
        extra_env=extra_env,
        timescale=("1ns", "1ps"),
    )
