"""scripts/bench_kernels.py: without CUDA it says so, exits 0 and writes no figures; its table
arithmetic (ratios, rates) on hand-made rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_kernels.py"


def _load(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_kernels", module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_measures_nothing(monkeypatch, tmp_path, capsys):
    bench = _load(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "bench"
    assert bench.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == bench.NO_CUDA
    assert not any(ch.isdigit() for ch in printed.replace("CUDA", ""))
    assert not out.exists()


def test_table_ratios_and_rates(monkeypatch):
    bench = _load(monkeypatch)
    # hand-made figures to check the arithmetic, not measurements
    row = bench._row("layer_norm", "8x8", (2.0, 10.0), (4.0, 30.0), "GB/s", 0.5)
    assert row.speedup == 2.0
    assert row.memory_ratio == 3.0
    assert row.ours_rate == 250.0
    assert row.base_rate == 125.0
    table = bench.markdown([row], {"torch": 1000.0, "triton": 1500.0}, "a GPU", "bf16")
    want = ("| layer_norm | 8x8 | 2.000 | 4.000 | 2.00x | 250.0 GB/s | 125.0 GB/s | 10 | 30 "
            "| 3.00x |")
    assert want in table
    assert "torch 1,000, triton 1,500 (1.50x)" in table
