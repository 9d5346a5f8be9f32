"""Verilog for one Amaranth component, written only when its text changes (so simulator
builds that depend on the file stay incremental)."""

from __future__ import annotations

from pathlib import Path

from amaranth.back import verilog
from amaranth.lib import wiring

__all__ = ["to_verilog", "write_verilog"]


def to_verilog(component: wiring.Component, name: str) -> str:
    """Verilog text of `component` as module `name`; ports are named after its signature
    (`i__payload`, `i__valid`, `i__ready`, ...), plus `clk` and `rst`."""
    return verilog.convert(component, name=name, emit_src=False)


def write_verilog(component: wiring.Component, path: Path, name: str) -> bool:
    """Write `component` as module `name` to `path`; True when the file changed."""
    text = to_verilog(component, name)
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True
