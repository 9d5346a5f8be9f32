"""The testbench base of every cocotb bench under `sim/`, in the manner of verilog-axi's `tb/`.

A `TB` owns what each bench used to set up by hand: the design's clock, its reset and the bus
models attached to it. A bench subclasses it (or builds one) with the models its design needs,
then drives traffic; the cocotb test function stays a short story of the case.

Where the clock runs:
- `TB(dut)` starts a cocotb `Clock` on `dut.clk` (benches whose Python models act every cycle,
  and the cocotbext-axi models, which must drive their outputs in step with the clock's edges);
- `TB(dut, clock="hdl")` leaves a clock generated in HDL (`always #5 clk = ~clk`) alone, so a
  long run needs no Python per cycle, and counts cycles on `dut.clk`;
- `TB(dut, clock=None)` is for a design whose clock is not a port at all (it runs inside the
  HDL): reset and waits then count the clock period in simulated time.

Reset is held from time 0, so nothing the design does before its first clock edge counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Literal, TypeVar

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer

__all__ = ["TB"]

M = TypeVar("M")
#: who drives the clock: a cocotb `Clock`, the HDL itself on port `clk`, or the HDL unseen
ClockSource = Literal["cocotb", "hdl"] | None


class TB:
    """Clock, reset and bus models around one cocotb `dut`.

    `period_ns` is the clock period, `clock` says who drives it (see the module doc), `reset`
    names the active-high synchronous reset port.
    """

    def __init__(self, dut, *, period_ns: int = 10, clock: ClockSource = "cocotb",
                 reset: str = "rst") -> None:
        if clock not in ("cocotb", "hdl", None):
            raise ValueError(f"clock must be 'cocotb', 'hdl' or None, not {clock!r}")
        self.dut = dut
        self.log = dut._log
        self.period_ns = period_ns
        self.clk = None if clock is None else dut.clk
        self.rst = getattr(dut, reset)
        #: the bus models attached with `add`, in the order they were attached
        self.models: list = []
        self.rst.value = 1
        if clock == "cocotb":
            Clock(self.clk, period_ns, unit="ns").start()

    def add(self, model: M, pauses: Iterator[bool] | None = None, quiet: bool = False) -> M:
        """Attach a bus model: `pauses` (a pattern such as `sim.streams.pauses`) thins its
        handshakes, `quiet` keeps its per-transfer INFO logs out (they cost more than the
        transfers)."""
        if pauses is not None:
            model.set_pause_generator(pauses)
        if quiet and isinstance(getattr(model, "log", None), logging.Logger):
            model.log.setLevel(logging.WARNING)
        self.models.append(model)
        return model

    async def cycles(self, n: int) -> None:
        """Wait `n` rising clock edges (or `n` periods where the clock is not a port)."""
        if self.clk is None:
            await Timer(n * self.period_ns, unit="ns")
        else:
            await ClockCycles(self.clk, n)

    async def reset(self, cycles: int = 3, settle: int = 0) -> None:
        """Hold reset for `cycles` clock edges, release it, then wait `settle` more."""
        self.rst.value = 1
        await self.cycles(cycles)
        self.rst.value = 0
        if settle:
            await self.cycles(settle)
