"""Projections carry their assumptions and a band: `hw.config.ASSUMPTIONS`, `project_band`
and `tandem perf`."""

from __future__ import annotations

import dataclasses
import json

import pytest

from host.compiler import ModelShape
from host.runtime.projection import BAND_KEYS, project, project_band
from hw.config import ASSUMPTIONS, CORNERS, PRESETS, ConfigError, at_corner

# small enough to project in about a second per corner, big enough to stream weights
SHAPE = ModelShape(vocab_size=2048, n_positions=128, n_embd=512, n_layer=2, n_head=8,
                   n_inner=2048)


def test_every_assumption_is_sourced_and_ordered():
    for a in ASSUMPTIONS.values():
        assert len(a.source) > 40, a.name
        values = (a.optimistic, a.central, a.pessimistic)
        # the pessimistic end is the slow end: lower clock, efficiency and link rate,
        # longer hop
        slower_when_smaller = a.name != "ring_hop_latency_ns"
        ordered = sorted(values, reverse=slower_when_smaller)
        assert list(values) == ordered, a.name


def test_at_corner_replaces_exactly_the_assumed_fields():
    base = PRESETS["u280"]
    for corner in CORNERS:
        moved = at_corner(base, corner)
        changed = {f.name for f in dataclasses.fields(base)
                   if getattr(base, f.name) != getattr(moved, f.name)}
        fields = {a.field for a in ASSUMPTIONS.values() if a.field}
        assert changed <= fields
        for a in ASSUMPTIONS.values():
            if a.field:
                assert getattr(moved, a.field) == a.value(corner)
    with pytest.raises(ConfigError, match="corner must be one of"):
        at_corner(base, "typical")


def test_the_central_defaults_are_the_issue_s():
    assert ASSUMPTIONS["clock_mhz"].central == 250.0
    assert ASSUMPTIONS["hbm_efficiency"].central == 0.85
    assert ASSUMPTIONS["ring_hop_latency_ns"].central == 1000.0


def test_band_corners_are_whole_projections_and_ordered():
    config = PRESETS["u280"].with_devices(2)
    result = project_band(SHAPE, config, 16, 8)
    for corner in CORNERS:
        alone = project(SHAPE, at_corner(config, corner), 16, 8)
        assert result["band"][corner] == {k: alone.get(k) for k in BAND_KEYS}
    assert {k: result[k] for k in BAND_KEYS} == result["band"]["central"]
    band = result["band"]
    for key in ("ms_per_token", "prefill_ms", "total_ms"):
        assert band["optimistic"][key] < band["central"][key] < band["pessimistic"][key], key
    assert result["assumptions"]["hbm_efficiency"]["value"] == 0.85
    assert result["assumptions"]["clock_mhz"]["range"] == [300.0, 200.0]
    # the achievable floor is the peak floor at the assumed efficiency
    assert result["achievable_floor_ms_per_token"] == pytest.approx(
        result["floor_ms_per_token"] / 0.85)


def test_perf_command_reports_the_band(capsys, tmp_path):
    from host.cli import main

    assert main(["perf", "--model", "gpt2-345m", "--config", "u280", "--devices", "2",
                 "--input-len", "4", "--output-len", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["band"]) == set(CORNERS)
    assert result["clock_mhz"] == 250.0
    assert result["band"]["pessimistic"]["ms_per_token"] > result["ms_per_token"]
    assert main(["perf", "--model", "gpt2-345m", "--config", "u280", "--devices", "2",
                 "--input-len", "4", "--output-len", "2", "--as-configured", "--json"]) == 0
    configured = json.loads(capsys.readouterr().out)
    assert "band" not in configured
    assert configured["clock_mhz"] == PRESETS["u280"].clock_mhz
    # the u280 preset is built for the optimistic corner (300 MHz, 0.92, 500 ns)
    assert at_corner(PRESETS["u280"], "optimistic") == PRESETS["u280"]
    assert configured["ms_per_token"] == result["band"]["optimistic"]["ms_per_token"]
