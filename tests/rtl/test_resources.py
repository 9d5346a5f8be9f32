"""`scripts/resources.py` on the FP16 multiplier: Yosys maps the 11 x 11 significand product
onto one DSP slice, as the numerics decision (products in DSPs) assumes."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest

from sim.runner import REPO_ROOT

_SPEC = importlib.util.spec_from_file_location("scripts_resources", REPO_ROOT / "scripts" /
                                               "resources.py")
resources = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = resources  # dataclasses look their module up there
_SPEC.loader.exec_module(resources)


@pytest.mark.slow
def test_fp16_multiplier_maps_its_product_to_one_dsp():
    if shutil.which("yosys") is None:
        pytest.skip("yosys not found: `apt-get install yosys` (make setup does)")
    used = resources.synthesize("fp16_mul", resources.units(16)["fp16_mul"])
    assert used.dsp == 1
    assert 0 < used.lut < 400
    assert used.ff > 0


def test_parse_stat_reads_the_last_report():
    text = ("Number of cells: 3\n  LUT2 1\n\n=== design ===\n   Number of cells:  5\n"
            "     DSP48E2   1\n     LUT6     4\n\nEnd\n")
    assert resources.parse_stat(text) == {"DSP48E2": 1, "LUT6": 4}
