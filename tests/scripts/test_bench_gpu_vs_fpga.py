"""scripts/bench_gpu_vs_fpga.py on a tiny model: every FPGA and heterogeneous figure is a band
of the three corners, in results.json, table.md and the plots; DFX stays one point; bad
arguments are one line, exit 2."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from host.compiler import ModelShape

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gpu_vs_fpga.py"
TINY = ModelShape(vocab_size=256, n_positions=64, n_embd=128, n_layer=2, n_head=4, n_inner=512)


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_gpu_vs_fpga", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gpu_vs_fpga", module)
    spec.loader.exec_module(module)
    # a tiny shape in place of the full-size ones: the projections take a second, not minutes
    monkeypatch.setattr(module, "MODEL_SHAPES", {"tiny": TINY})
    return module


def test_band_in_results_table_and_plots(bench, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--out", str(out), "--models", "tiny", "--inputs", "4", "--outputs", "1", "3",
            "--repeats", "1", "--decode-samples", "0", "--cpu"]
    assert bench.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["corners"] == ["central", "pessimistic", "optimistic"]
    assert set(results["assumptions"]) >= {"clock_mhz", "hbm_efficiency", "ring_hop_latency_ns",
                                           "pcie_gbps"}
    assert results["command"].endswith(" ".join(argv))
    rows = results["models"]["tiny"]["workloads"]
    assert [(r["input"], r["output"]) for r in rows] == [(4, 1), (4, 3)]
    for r in rows:
        assert r["gpu_ms"]["eager"] > 0
        assert r["dfx_ms"] is None  # DFX is compared with gpt2-1.5b only
        for key in ("fpga_ms", "hetero_ms", "fpga_decode_ms_per_token"):
            assert set(r[key]) == {"1", "2", "4"}
            for band in r[key].values():
                # every assumption moves the same way at once: slower at the pessimistic end
                assert band["optimistic"] <= band["central"] <= band["pessimistic"], (key, band)
        four = r["fpga_ms"]["4"]
        assert four["optimistic"] < four["pessimistic"]  # the clock alone moves it 1.5x
        # the heterogeneous figure is its parts, at each corner
        for c in results["corners"]:
            parts = (r["gpu_prefill_ms"] + r["kv_transfer_ms"]["4"][c]
                     + r["hetero_fpga_ms"]["4"][c])
            assert r["hetero_ms"]["4"][c] == pytest.approx(parts)
        # PCIe at the corner's assumption: 24 GB/s optimistic, 12 central
        kv = r["kv_transfer_ms"]["4"]
        assert kv["central"] == pytest.approx(2 * kv["optimistic"])
    # one assumption at a time, on 4 devices at the longest workload
    sens = results["sensitivity"]
    assert (sens["model"], sens["devices"], sens["input"], sens["output"]) == ("tiny", 4, 4, 3)
    moves = {(m["assumption"], m["corner"]): m for m in sens["moves"]}
    # the ring hop's central value is its pessimistic one: only the optimistic move is listed
    assert set(moves) == {("clock_mhz", "pessimistic"), ("clock_mhz", "optimistic"),
                          ("hbm_efficiency", "pessimistic"), ("hbm_efficiency", "optimistic"),
                          ("ring_hop_latency_ns", "optimistic"), ("pcie_gbps", "optimistic")}
    assert moves[("clock_mhz", "pessimistic")]["change"] > 0
    assert moves[("clock_mhz", "optimistic")]["change"] < 0
    assert sens["central"]["total_ms"] == rows[1]["fpga_ms"]["4"]["central"]
    pcie = moves[("pcie_gbps", "optimistic")]
    assert pcie["kv_transfer_ms"] == pytest.approx(rows[1]["kv_transfer_ms"]["4"]["optimistic"])
    table = (out / "table.md").read_text()
    assert "One assumption at a time: tiny on 4 device(s)" in table
    f4 = rows[1]["fpga_ms"]["4"]
    cell = (f"{f4['central']:,.1f} [{f4['pessimistic']:,.1f}–{f4['optimistic']:,.1f}]")
    assert cell in table
    for label in ("CPU", "**measured**", "**projected**", "[pessimistic–optimistic]"):
        assert label in table
    assert (out / "latency_tiny.png").stat().st_size > 0
    assert (out / "roofline.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out
    # the reports redrawn from results.json alone are the same
    again = tmp_path / "again"
    assert bench.main(["--out", str(again), "--from-results", str(out / "results.json")]) == 0
    assert (again / "table.md").read_text() == table
    assert (again / "latency_tiny.png").stat().st_size > 0
    assert not (again / "results.json").exists()


def test_fixed_pcie_applies_at_every_corner(bench, tmp_path):
    out = tmp_path / "bench"
    assert bench.main(["--out", str(out), "--models", "tiny", "--inputs", "3", "--outputs",
                       "1", "--repeats", "1", "--decode-samples", "0", "--cpu",
                       "--pcie-gbps", "6"]) == 0
    kv = json.loads((out / "results.json").read_text())["models"]["tiny"]["workloads"][0][
        "kv_transfer_ms"]["1"]
    assert kv["optimistic"] == kv["central"] == kv["pessimistic"] > 0


@pytest.mark.parametrize(("argv", "says"), [
    (["--models", "nope"], "invalid choice: 'nope'"),
    (["--repeats", "0"], "must be at least 1"),
    (["--decode-samples", "1"], "--decode-samples must be 0"),
    (["--inputs", "1"], "must be at least 2"),
    (["--outputs", "60"], "beyond tiny's context of 64"),
    (["--pcie-gbps", "nan"], "positive finite number"),
    (["--jobs", "x"], "'x' is not an integer"),
])
def test_bad_arguments_are_one_line_exit_2(bench, tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--out", str(tmp_path / "bench"), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert says in err
    assert not (tmp_path / "bench").exists()


def test_from_results_needs_a_results_file(bench, tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--out", str(tmp_path / "bench"), "--from-results", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "is not a results.json of this script" in err


def test_out_must_be_a_directory(bench, tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--out", str(path), "--inputs", "4", "--outputs", "1"])
    assert exit_.value.code == 2
    assert "is not a directory" in capsys.readouterr().err
