"""PYNQ over the RTL simulation: the board backend's driver code, run against the kernel's
Verilog through the same PYNQ calls it makes on an Alveo card (the way cocotbpynq does).

- `top`: the card build, kernels with their control and HBM ports at the top level;
- `card`: the cocotb bus models of the card (AXI4-Lite master, cocotbext-axi RAMs per bank);
- `api`: the `pynq` module a driver is given instead of PYNQ's;
- `xclbin`: the simulated xclbin, beside the kernel.xml and link.cfg `hw.vitis` generates;
- `run_jobs`: one simulation session that runs host functions (`"module:function"`) in order,
  each in a `cocotb.task.bridge` thread, and returns what they returned.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hw.config import AccelConfig

from .. import runner
from . import top
from .xclbin import XCLBIN_NAME, sim_platform, write_xclbin

__all__ = ["XCLBIN_NAME", "Session", "run_jobs", "sim_platform", "write_xclbin"]


class Session:
    """A built simulated card for `config` with `devices` kernels, and its xclbin."""

    def __init__(self, config: AccelConfig, devices: int = 1, simulator: str = "verilator",
                 work_dir: Path | None = None) -> None:
        self.config = config
        self.devices = devices
        self.simulator = simulator
        self.bench = top.CardBench(config, devices)
        self.sim, self.build_dir = top.build(self.bench, simulator)
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="pynq-", dir=self._runs()))
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def _runs(self) -> Path:
        root = runner.REPO_ROOT / "build" / "pynq-runs"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def xclbin(self, name: str = "xclbin", link_cfg: str | None = None) -> Path:
        """An xclbin of this build in `work_dir/name` (with `link_cfg` instead of the
        generated connectivity, if given)."""
        verilog = (self.build_dir / f"{top.KERNEL}.v").read_text()
        return write_xclbin(self.config, self.work_dir / name, verilog, self.build_dir, link_cfg)

    def run_jobs(self, jobs: list[dict], pauses: bool = False, seed: int = 1) -> dict:
        """Run `jobs` (`{"name", "fn", "args"}`) in one simulation; returns name -> result
        (`value` or `error`/`type`/`traceback`, and `violations`)."""
        platform = sim_platform(self.config)
        result = self.work_dir / "session.json"
        result.unlink(missing_ok=True)
        spec = {"config": self.config.to_dict(), "devices": self.devices,
                "bank_bytes": platform.hbm_bank_bytes, "banks": platform.hbm_banks,
                "pauses": pauses, "seed": seed, "jobs": jobs, "result": str(result)}
        env = {"TANDEM_PYNQ": json.dumps(spec),
               "PYTHONPATH": os.pathsep.join([str(runner.REPO_ROOT),
                                              os.environ.get("PYTHONPATH", "")])}
        try:
            runner.run(self.sim, self.build_dir, top.TOPLEVEL, "sim.pynq.cocotb_pynq",
                       env=env, test_dir=self.work_dir)
        except SystemExit as e:
            raise RuntimeError(f"the simulated card's session failed (see "
                               f"{self.work_dir}): {e}") from None
        if not result.is_file():
            raise RuntimeError(f"the simulated card's session left no result (see "
                               f"{self.work_dir})")
        return json.loads(result.read_text())


def run_jobs(config: AccelConfig, jobs: list[dict], **options) -> dict:
    """`Session(config).run_jobs(jobs, **options)`."""
    return Session(config).run_jobs(jobs, **options)
