"""cocotb side of an end-to-end run: program the kernels' control registers through
cocotbext-axi's AXI4-Lite master, start them, wait for their interrupts, read the status
registers, and make the memory models dump.

The run comes in TANDEM_RUN (JSON): `devices` (kernels started), `args` (per device: register
name -> value, names from `hw.regmap`), `max_cycles`, `progress` (a file the cycle count is
written to every `progress_every` cycles, for the host's progress bar) and `result` (where the
JSON result goes: per device its status registers and the cycle its interrupt rose).
"""

from __future__ import annotations

import json
import os

import cocotb
from cocotb.triggers import First, RisingEdge, Timer
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from hw.regmap import CONTROL_BITS, Register, RegMap
from sim.tb import TB

_PERIOD_NS = 10


def _regmap(raw: dict) -> RegMap:
    regs = tuple(Register(r["name"], r["offset"], r["width"], r["access"], r["kind"])
                 for r in raw["registers"])
    return RegMap(regs, raw["ports"], raw["addr_bits"])


@cocotb.test()
async def run(dut):
    case = json.loads(os.environ["TANDEM_RUN"])
    regmap = _regmap(case["regmap"])
    n = case["devices"]
    tb = TB(dut, clock="hdl", period_ns=_PERIOD_NS)  # the clock runs in the HDL top
    dut.dump.value = 0
    masters = [tb.add(AxiLiteMaster(AxiLiteBus.from_prefix(dut, f"dev{d}_s_axi_control_"),
                                    dut.clk, dut.rst))
               for d in range(case["built_devices"])]
    await tb.reset(cycles=5, settle=2)

    async def write(d: int, name: str, value: int) -> None:
        reg = regmap[name]
        for word in range(reg.width // 32):
            await masters[d].write_dword(reg.offset + 4 * word, (value >> (32 * word))
                                         & 0xFFFFFFFF)

    async def read(d: int, name: str) -> int:
        reg = regmap[name]
        value = 0
        for word in range(reg.width // 32):
            value |= await masters[d].read_dword(reg.offset + 4 * word) << (32 * word)
        return value

    for d in range(n):
        for name, value in case["args"][d].items():
            await write(d, name, value)
        await write(d, "gie", 1)
        await write(d, "ier", 1)
    for d in range(n):
        await write(d, "control", 1 << CONTROL_BITS["ap_start"])
    started = int(dut.cycle.value)
    done_at: dict[int, int] = {}
    progress = case.get("progress")
    every = case.get("progress_every", 20000)
    while len(done_at) < n:
        for d in range(n):
            if d not in done_at and str(getattr(dut, f"dev{d}_interrupt").value) == "1":
                done_at[d] = int(dut.cycle.value)
        if len(done_at) == n:
            break
        now = int(dut.cycle.value) - started
        if progress:
            with open(progress, "w") as f:
                f.write(str(now))
        if now > case["max_cycles"]:
            break
        waits = [RisingEdge(getattr(dut, f"dev{d}_interrupt")) for d in range(n)
                 if d not in done_at]
        await First(Timer(every * _PERIOD_NS, unit="ns"), *waits)
    result = {"devices": []}
    for d in range(n):
        control = await read(d, "control")
        result["devices"].append({
            "done": d in done_at,
            "irq_cycle": done_at.get(d),
            "control": control,
            "cycles": await read(d, "cycles"),
            "fault": await read(d, "fault"),
        })
    result["started_cycle"] = started
    dut.dump.value = 1
    await tb.cycles(3)
    dut.dump.value = 0
    with open(case["result"], "w") as f:
        json.dump(result, f)
    assert all(dev["done"] for dev in result["devices"]), (
        f"not every kernel finished within {case['max_cycles']} cycles: {result}")
