"""AccelConfig: presets, JSON round-trip, and refusals that name the limit."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hw.config import PRESETS, AccelConfig, ConfigError, load_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    config = PRESETS[name]
    assert AccelConfig.from_json(config.to_json()) == config


def test_alveo_figures():
    for name in ("u280", "u55c"):
        c = PRESETS[name]
        assert c.hbm_ports == 32
        assert c.hbm_peak_gbps == pytest.approx(460, abs=0.1)
        assert c.ring_gbps == 12.5  # QSFP28: 100 Gb/s
    assert PRESETS["u280"].hbm_channel_bytes * 32 == 8 * 2**30
    assert PRESETS["u55c"].hbm_channel_bytes * 32 == 16 * 2**30
    assert PRESETS["u280"].beat_bytes == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"devices": 0}, "devices must be a positive integer, not 0"),
        ({"lane_width": 24}, "lane_width must be a power of two, not 24"),
        ({"lane_width": 16}, r"lane_width \(16\) x 16 bits must equal hbm_port_width_bits"),
        ({"mpu_lanes": 48}, r"mpu_lanes \(48\) must be a multiple of hbm_ports \(32\)"),
        ({"hbm_efficiency": 1.5}, r"hbm_efficiency must be in \(0, 1\]"),
        ({"number_format": "int8"}, "number_format must be one of"),
        ({"sfu_width": 128}, r"sfu_width \(128\) cannot exceed vector_width"),
        ({"clock_mhz": 0}, "clock_mhz must be positive"),
    ],
)
def test_invalid_configs_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(PRESETS["u280"], **change)


def test_load_config_from_preset_file_and_errors(tmp_path):
    assert load_config("u280", devices=4).devices == 4
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "clock_mhz": 300.0}))
    assert load_config(path).clock_mhz == 300.0
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(tmp_path / "missing.json")
    path.write_text(json.dumps({"clock_ghz": 1}))
    with pytest.raises(ConfigError, match="unknown accelerator config field 'clock_ghz'"):
        load_config(path)
    path.write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    with pytest.raises(ConfigError, match="devices must be a positive integer"):
        load_config("tiny", devices=0)
