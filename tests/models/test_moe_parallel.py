"""Expert parallelism on torch.distributed (gloo, CPU processes): DeepSpeed's group layout,
and forward outputs, losses and gradients equal to the single-process layer's."""

from __future__ import annotations

import pytest
import torch.multiprocessing as mp

from models.errors import ModelConfigError
from models.moe import expert_parallel_ranks

from . import moe_parallel_worker


def test_group_layout_is_deepspeeds():
    ep, edp = expert_parallel_ranks(world_size=8, ep_size=4)
    assert ep == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert edp == [[0, 4], [1, 5], [2, 6], [3, 7]]
    ep, edp = expert_parallel_ranks(world_size=4, ep_size=1)
    assert ep == [[0], [1], [2], [3]]
    assert edp == [[0, 1, 2, 3]]


def test_world_not_divisible_by_ep_size_is_refused():
    with pytest.raises(ModelConfigError, match=r"world size \(6\) must be divisible by ep_size"):
        expert_parallel_ranks(6, 4)


def _spawn(world: int, ep_sizes: list[int], tmp_path) -> None:
    mp.start_processes(moe_parallel_worker.run, nprocs=world, start_method="spawn", join=True,
                       args=(world, str(tmp_path / "store"), ep_sizes))


@pytest.mark.timeout(300)
def test_two_processes_equal_the_single_process_layer(tmp_path):
    _spawn(2, [1, 2], tmp_path)  # ep 1: pure data parallel; ep 2: experts split in two


@pytest.mark.timeout(300)
def test_four_processes_equal_the_single_process_layer(tmp_path):
    # ep 2 has EDP groups of 2 (gradients summed over both groups), ep 4 none
    _spawn(4, [2, 4], tmp_path)
