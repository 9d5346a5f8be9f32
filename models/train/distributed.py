"""The trainer on torch.distributed: process group, data sharding, reductions, RNG states.

One process per device, launched by `torchrun --nproc-per-node N` (or `tandem train --nproc
N`, which runs torchrun itself). Every process runs the same `train()`; rank 0 alone writes
the run directory.

Data. An optimiser step consumes a global batch of `grad_accum * world_size` micro-batches of
`batch_size` windows, drawn in one fixed order from the step's generator (seeded by (seed,
step), as in one process). Micro-batch j goes to rank j % world_size, so N processes with
`grad_accum` A see exactly the windows one process sees with `grad_accum` A * N, and its
loss (the mean over the A * N micro-batches) is the same number up to summation order.

Randomness inside the model (MoE random token selection, router jitter, second-expert
sampling, the DTS gate's Gumbel noise, dropout) is drawn from per-rank streams, each a
function of (seed, step, rank): a resumed run repeats it exactly, but an MoE run with random
routing on N processes is a different, equally valid draw than on one. With deterministic
routing N processes equal one (tests/models/test_train_ddp.py).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ModelConfigError

__all__ = [
    "NUMPY_GLOBAL_RNG",
    "DistContext",
    "check_device",
    "get_rng_states",
    "init_distributed",
    "seed_global_rngs",
    "set_rng_states",
]


@dataclass
class DistContext:
    """Where this process sits: rank, world size, its device and the collective helpers."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this module created the process group and must destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _comm_device(self) -> torch.device:
        backend = dist.get_backend() if self.enabled else "gloo"
        return self.device if backend == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum each value over the ranks (float64). One process: the values themselves."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def my_micro_batches(self, grad_accum: int) -> list[int]:
        """Indices, in the step's draw order, of the micro-batches this rank trains on."""
        return list(range(self.rank, grad_accum * self.world_size, self.world_size))

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ModelConfigError(f"environment variable {name} must be an integer, not {raw!r}"
                               ) from None


def check_device(device: str) -> torch.device:
    """The device type a `device` option (auto, cpu, cuda, cuda:N) trains on; refuses others
    and CUDA where there is none."""
    if device not in ("auto", "cpu", "cuda") and not (
            device.startswith("cuda:") and device[5:].isdigit()):
        raise ModelConfigError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ModelConfigError(f"device {device} was asked for but torch.cuda.is_available() "
                               "is False; use --device cpu")
    return torch.device("cuda" if use_cuda else "cpu")


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*), or
    use one the caller already initialised; one process when there is neither.

    Device: `auto` is CUDA when present, else the CPU; with CUDA each process takes the GPU of
    its LOCAL_RANK. The backend is NCCL on CUDA and gloo on the CPU.
    """
    use_cuda = check_device(device).type == "cuda"
    owns = False
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
    elif _env_int("WORLD_SIZE", 1) > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
    else:
        rank, world, local_rank = 0, 1, 0
    if use_cuda:
        index = int(device.split(":")[1]) if ":" in device else (local_rank if world > 1 else None)
        dev = torch.device("cuda", index) if index is not None else torch.device("cuda")
        if dev.index is not None:
            torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev,
                       owns_group=owns)


# -- random number generator states (saved per rank in every checkpoint) ----------------------


#: the legacy global RandomState that np.random.rand & co. draw from (saved, never drawn from)
NUMPY_GLOBAL_RNG = np.random.mtrand._rand


def get_rng_states() -> dict:
    """Every global RNG this process may draw from, as plain lists and tensors (they load
    with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = NUMPY_GLOBAL_RNG.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_global_rngs(seed: int, rank: int) -> None:
    """Seed numpy's and python's global RNGs from (seed, rank), and torch's on ranks > 0
    (rank 0 keeps the stream that initialised the weights, as one process always did)."""
    NUMPY_GLOBAL_RNG.seed((seed + 7_919 * rank) % 2**32)
    random.seed(seed * 1_000_003 + rank)
    if rank > 0:
        torch.manual_seed(seed + 104_729 * rank)


def set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    NUMPY_GLOBAL_RNG.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
