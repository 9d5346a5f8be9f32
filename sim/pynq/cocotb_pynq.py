"""cocotb side of a simulated-card session: build the card's bus models around the kernels,
attach them to `sim.pynq.api`, and run the host jobs, each in a thread started by
`cocotb.task.bridge` so that its blocking PYNQ calls step the simulation.

The session comes in TANDEM_PYNQ (JSON): `config`, `devices`, `bank_bytes`, `banks`,
`pauses`, `seed`, `jobs` (each `{"name", "fn": "module:function", "args"}`) and `result`
(where the JSON of `{name: {"value": ...} | {"error": ..., "type": ...}}` goes). A job's
exception is its result, not the session's failure; a bus access outside a port's bank is
added to the job's result as `violations`.
"""

from __future__ import annotations

import importlib
import json
import os
import traceback

import cocotb
from cocotb.task import bridge

from hw.config import AccelConfig
from sim.pynq import api
from sim.pynq.card import SimCard

CLOCK_NS = 10


@cocotb.test()
async def session(dut):
    spec = json.loads(os.environ["TANDEM_PYNQ"])
    card = SimCard(dut, AccelConfig.from_dict(spec["config"]), spec["devices"],
                   spec["bank_bytes"], spec["banks"], pauses=spec["pauses"], seed=spec["seed"],
                   period_ns=CLOCK_NS)
    await card.cycles(4)  # in reset until the host loads an xclbin
    api.attach(card)
    results = {}
    try:
        for job in spec["jobs"]:
            module, _, name = job["fn"].partition(":")
            fn = getattr(importlib.import_module(module), name)
            card.violations = []
            try:
                value = await bridge(fn)(**job["args"])
                results[job["name"]] = {"value": value}
            except Exception as e:  # the job's failure is its result
                results[job["name"]] = {"error": str(e), "type": type(e).__name__,
                                        "traceback": traceback.format_exc()}
            results[job["name"]]["violations"] = card.violations
    finally:
        api.detach()
        with open(spec["result"], "w") as f:
            json.dump(results, f)
