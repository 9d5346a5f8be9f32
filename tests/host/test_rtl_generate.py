"""`tandem generate --backend rtl` on the shipped default model: the simulated HBM memories are
sized from the compiled program (they were fixed at 2**15 beats per port, too small for it),
and no run folder is left under build/rtl-runs, after a good run or a failed one."""

from __future__ import annotations

import json

import pytest

import models
from host.cli import main
from host.runtime.rtl.cluster import MIN_DEPTH_LOG2, RtlCluster, RtlError
from hw.intmath import ceil_div
from sim import runner

pytestmark = [pytest.mark.rtl, pytest.mark.slow, pytest.mark.simulator("verilator")]

RUNS = runner.REPO_ROOT / "build" / "rtl-runs"


def _runs() -> set[str]:
    return {p.name for p in RUNS.glob("run-*")} if RUNS.is_dir() else set()


def test_rtl_generate_runs_the_default_model_and_cleans_up(capsys):
    before = _runs()
    # one prompt token, one new token: ~160k simulated cycles (a few minutes of Verilator)
    argv = ["generate", "--prompt-ids", "10", "--max-new-tokens", "1", "--json"]
    assert main([*argv, "--backend", "rtl"]) == 0
    rtl = json.loads(capsys.readouterr().out)
    assert main([*argv, "--backend", "isa"]) == 0
    isa = json.loads(capsys.readouterr().out)
    assert len(rtl["tokens"]) == 1
    assert rtl["tokens"] == isa["tokens"]  # the RTL is bit-exact with the isa backend
    assert _runs() <= before  # nothing of this run is left


def test_memory_depth_follows_the_program_and_a_failed_run_is_removed():
    from host.compiler import compile_model
    from hw.config import TINY

    model = models.load_model(models.default_model_dir())
    compiled = compile_model(model, TINY)
    cluster = RtlCluster(TINY, max_cycles=100, hbm_bytes=0)
    cluster.load(compiled.programs, compiled.images)
    beats = ceil_div(compiled.images[0].used_bytes(1), TINY.beat_bytes)
    assert cluster.bench.depth_log2 > MIN_DEPTH_LOG2
    assert 1 << cluster.bench.depth_log2 >= beats
    before = _runs()
    with pytest.raises(RtlError):  # 100 cycles cannot finish a job
        cluster.wait()
    assert _runs() <= before
