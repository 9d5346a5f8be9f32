"""Launching a multi-process training run: torchrun (torch.distributed.run) on this machine.

`tandem train --nproc N ...` re-runs the same command without `--nproc` as N processes of
`torchrun --standalone --nproc-per-node N`, the launcher users run themselves on a cluster;
each process finds its rank in the environment torchrun sets (see `distributed.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import torch

from ..errors import ModelConfigError

__all__ = ["check_nproc", "run_torchrun", "torchrun_command", "under_torchrun"]


def under_torchrun() -> bool:
    """True inside a process that torchrun (or another launcher) started as one rank."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


#: gloo ranks on the CPU beyond this many per core only thrash (and a typo such as
#: --nproc 99999 would fork that many interpreters)
CPU_RANKS_PER_CORE = 4


def check_nproc(nproc: int, device: str) -> None:
    """Refuse a process count that cannot run: < 1, more than the GPUs when on CUDA, or more
    than `CPU_RANKS_PER_CORE` per core on the CPU."""
    if not isinstance(nproc, int) or nproc < 1:
        raise ModelConfigError(f"nproc must be a positive integer, not {nproc!r}")
    if nproc > 1 and under_torchrun():
        raise ModelConfigError(
            "--nproc launches torchrun itself; under torchrun leave --nproc out")
    uses_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if nproc > 1 and uses_cuda and nproc > torch.cuda.device_count():
        raise ModelConfigError(
            f"nproc {nproc} asks for one GPU per process but this machine has "
            f"{torch.cuda.device_count()}")
    cores = os.cpu_count() or 1
    if not uses_cuda and nproc > CPU_RANKS_PER_CORE * cores:
        raise ModelConfigError(
            f"nproc {nproc} CPU processes, each with its own copy of the model, on {cores} "
            f"core(s): at most {CPU_RANKS_PER_CORE * cores} ({CPU_RANKS_PER_CORE} per core)")


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m module args`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", module, *args]


def run_torchrun(nproc: int, module: str, args: Sequence[str]) -> int:
    """Run `module args` as `nproc` ranks; the exit status of the launch (0 when all ended
    well). One OpenMP thread per rank unless OMP_NUM_THREADS says otherwise."""
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(torchrun_command(nproc, module, args), env=env, check=False).returncode
