"""One simulation build holding every arithmetic unit, each behind its own stream harness.

Only the unit under test gets clock edges (`select`), so the others cost nothing per cycle,
and one Verilator build (the slow part: compiling the C++ model) serves every unit and case.
"""

from __future__ import annotations

import re
from pathlib import Path

from amaranth.hdl import Value

from rtl.verilog import to_verilog

from .. import runner
from .units import UNITS

__all__ = ["TOPLEVEL", "VECTOR_DEPTH", "build", "select_index"]

TOPLEVEL = "arith_top"
#: Vectors (and outputs) each harness memory holds, per simulator.
VECTOR_DEPTH = {"verilator": 1 << 18, "icarus": 1 << 14}
_HDL = runner.REPO_ROOT / "sim" / "hdl"


def select_index(unit: str, units=UNITS) -> int:
    """The `select` value that clocks `unit` in a build of `units`."""
    return list(units).index(unit) + 1


def _top_text(widths: dict[str, tuple[int, int]], depth: int) -> str:
    lines = ["`timescale 1ns/1ps", ""]
    for name in widths:
        lines += [
            f"`define TANDEM_HARNESS harness_{name}",
            f"`define TANDEM_DUT {name}_dut",
            f'`define TANDEM_VECTORS "{name}_vectors=%s"',
            f'`define TANDEM_RESULTS "{name}_results=%s"',
            '`include "stream_harness.vh"',
            "`undef TANDEM_HARNESS", "`undef TANDEM_DUT", "`undef TANDEM_VECTORS",
            "`undef TANDEM_RESULTS", "",
        ]
    lines += [
        f"module {TOPLEVEL} (",
        "    input wire rst,",
        "    input wire [7:0] select,",
        "    input wire [31:0] n_in,",
        "    input wire [31:0] n_out,",
        "    input wire [31:0] seed,",
        "    input wire [8:0] valid_rate,",
        "    input wire [8:0] ready_rate,",
        "    input wire dump,",
        "    output reg done,",
        "    output reg [31:0] done_at,",
        "    output reg [31:0] received,",
        "    output reg [31:0] violations",
        ");",
        "    reg clk = 1'b0;",
        "    always #5 clk = ~clk;",
    ]
    for name, (in_w, out_w) in widths.items():
        lines += [
            f"    wire clk_{name} = clk & (select == 8'd{select_index(name, widths)});",
            f"    wire done_{name};",
            f"    wire [31:0] cycles_{name}, done_at_{name}, received_{name}, violations_{name};",
            f"    harness_{name} #(.IN_W({in_w}), .OUT_W({out_w}), .DEPTH({depth}), "
            f".OUT_DEPTH({depth})) u_{name} (",
            f"        .clk(clk_{name}), .rst(rst), .n_in(n_in), .n_out(n_out), .seed(seed),",
            "        .valid_rate(valid_rate), .ready_rate(ready_rate), .dump(dump),",
            f"        .done(done_{name}), .cycles(cycles_{name}), .done_at(done_at_{name}),",
            f"        .received(received_{name}), .violations(violations_{name})",
            "    );",
        ]
    # The selected harness's status, on the top's ports (all a testbench needs to read).
    lines += ["    always @* begin", "        case (select)"]
    for name in widths:
        lines += [
            f"            8'd{select_index(name, widths)}: begin done = done_{name}; "
            f"done_at = done_at_{name}; received = received_{name}; "
            f"violations = violations_{name}; end",
        ]
    lines += [
        "            default: begin done = 1'b0; done_at = 0; received = 0; violations = 0; end",
        "        endcase",
        "    end",
        "endmodule", "",
    ]
    return "\n".join(lines)


# Yosys marks every `always @*` block with a register initialised to 0, meant to run the
# block once at time 0. Icarus applies declaration initialisers without an event, so a
# block whose inputs are all constant (a folded leading-zero count, say) would keep x
# forever. Changing the register at time 0 gives Icarus the event.
_AUTO_REG = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend[^ ]*) += 0;$", re.MULTILINE)


def _icarus_wakeup(text: str) -> str:
    return _AUTO_REG.sub(
        lambda m: f"{m[1]}reg {m[2]} ;\n{m[1]}initial begin {m[2]} = 1'b0; #0 {m[2]} = 1'b1; end",
        text)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def build(simulator: str, build_dir: Path, units=UNITS):
    """Write the Verilog of every unit in `units` and the top, compile them; returns the
    cocotb runner."""
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = []
    widths = {}
    for name, spec in units.items():
        unit = spec.make()
        widths[name] = (len(Value.cast(unit.i.payload)), len(Value.cast(unit.o.payload)))
        text = to_verilog(unit, f"{name}_dut")
        if simulator == "icarus":
            text = _icarus_wakeup(text)
        path = build_dir / f"{name}.v"
        _write_if_changed(path, text)
        sources.append(path)
    top = build_dir / f"{TOPLEVEL}.v"
    _write_if_changed(top, _top_text(widths, VECTOR_DEPTH[simulator]))
    sources.append(top)
    return runner.build(simulator, build_dir, sources, TOPLEVEL, includes=[_HDL])
