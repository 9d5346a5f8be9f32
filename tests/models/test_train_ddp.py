"""The trainer on 2 gloo CPU processes: DDP, FSDP2 (`shard`) and expert-parallel MoE give the
losses of one process that trains on the same global batch, and stopped 2-process runs
(expert-parallel, FSDP2) resume exactly.

Tolerance. With batch_size B, grad_accum A and W ranks, the step's global batch is the same
A x W micro-batches one process draws with grad_accum A x W (models.train.distributed).
What may differ is the order of floating-point sums: gradients are all-reduced across ranks
instead of accumulated in one process, and losses are averaged the same way. On 2 ranks
those sums happen to be exact (a sum of two terms, halved, equals two halves summed), and
the measured difference is 0.0. With 4 ranks the order does change: 2.4e-7 nats at most
over 8 steps (measured, DDP/FSDP2/EP on gloo); the bound is 1e-5 nats on losses of ~6
(about 1e-6 relative), far below what a wrong batch, a missing all-reduce or a wrong divisor changes
(the one-process run with grad_accum 1, which sees half the data, differs by > 1e-3).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from models.train import TrainConfig, train
from models.train.distributed import DistContext

from . import train_ddp_worker

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 32, "batch_size": 4,
        "warmup_steps": 2, "lr": 3e-3, "min_lr": 3e-4, "eval_interval": 2, "eval_batches": 3,
        "max_steps": 4}
#: top-1 routing without random token selection or noise: deterministic, so a rank routes its
#: micro-batch as the single process routes the same micro-batch
MOE = {"moe_num_experts": 4, "moe_top_k": 1, "moe_use_rts": False, "moe_every": 1}
TOL = 1e-5
TIMING = ("elapsed_s", "tokens_per_s")


def _log(path) -> list[dict]:
    rows = [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _max_loss_diff(a: list[dict], b: list[dict], same_batch: bool = True) -> float:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    if same_batch:  # tokens seen: the global batch
        assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True)
               for k in ("train_loss", "val_loss"))


@pytest.mark.parametrize(("world", "accum"), [(1, 3), (2, 1), (2, 3), (4, 2)])
def test_each_micro_batch_goes_to_exactly_one_rank(world, accum):
    shares = [DistContext(rank=r, world_size=world).my_micro_batches(accum) for r in range(world)]
    assert all(len(s) == accum for s in shares)
    assert sorted(j for s in shares for j in s) == list(range(world * accum))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, tiny_corpus):
    torch.set_num_threads(1)
    ref = tmp_path / "ref"
    for name, options in (("dense", {**TINY, "grad_accum": 2}), ("half", TINY),
                          ("moe", {**TINY, **MOE, "grad_accum": 2})):
        train(TrainConfig(**options), tiny_corpus, ref / name, device="cpu", progress=False)
    runs = tmp_path / "runs"
    cases = [
        (str(runs / "ddp"), TINY, {}),
        (str(runs / "fsdp"), {**TINY, "shard": True}, {}),
        (str(runs / "moe_dp"), {**TINY, **MOE}, {}),  # experts replicated, all-reduced
        (str(runs / "ep"), {**TINY, **MOE, "moe_ep_size": 2}, {}),  # 2 experts per rank
        # preempted after step 3 (between two log rows), then resumed by both ranks
        (str(runs / "ep_resumed"), {**TINY, **MOE, "moe_ep_size": 2}, {"stop_after": 3}),
        (str(runs / "ep_resumed"), {**TINY, **MOE, "moe_ep_size": 2}, {"resume": True}),
        (str(runs / "fsdp_resumed"), {**TINY, "shard": True}, {"stop_after": 3}),
        (str(runs / "fsdp_resumed"), {**TINY, "shard": True}, {"resume": True}),
    ]
    mp.start_processes(train_ddp_worker.run, nprocs=2, start_method="spawn", join=True,
                       args=(2, str(tmp_path / "store"), str(tiny_corpus), cases))

    diffs = {name: _max_loss_diff(_log(runs / name), _log(ref / want))
             for name, want in (("ddp", "dense"), ("fsdp", "dense"), ("moe_dp", "moe"),
                                ("ep", "moe"))}
    print("max |loss difference| against one process:", diffs)
    assert all(d <= TOL for d in diffs.values()), diffs
    # the check can fail: one process with half the global batch is far off
    assert _max_loss_diff(_log(runs / "ddp"), _log(ref / "half"), same_batch=False) > 1e-3
    # resumed 2-process runs (experts split; FSDP2) are the uninterrupted ones, bit for bit
    for name in ("ep", "fsdp"):
        assert _log(runs / f"{name}_resumed") == _log(runs / name)
        a = load_file(runs / name / "model.safetensors")
        b = load_file(runs / f"{name}_resumed" / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    a = load_file(runs / "ep" / "model.safetensors")
    # the expert-parallel checkpoint holds every expert: it loads as the full model
    full = load_file(ref / "moe" / "model.safetensors")
    assert a.keys() == full.keys()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tandem_train_nproc_2_launches_torchrun(tmp_path, tiny_corpus, capfd):
    from host.cli import main as tandem

    flags = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32",
             "--batch-size", "4", "--max-steps", "2", "--eval-interval", "2",
             "--eval-batches", "2", "--warmup-steps", "1", "--device", "cpu"]
    out = tmp_path / "run"
    assert tandem(["train", "--data", str(tiny_corpus), "--out", str(out), "--nproc", "2",
                   *flags]) == 0
    printed = capfd.readouterr().out
    assert printed.count('"steps": 2') == 1  # rank 0 alone reports
    (row,) = _log(out)
    assert row["tokens"] == 2 * 4 * 32 * 2  # steps x batch x block x processes
    assert (out / ".tandem-out").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary sibling left
