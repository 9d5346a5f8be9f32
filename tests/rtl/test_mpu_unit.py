"""The MPU (`rtl.core.mpu.Mpu`) alone on Verilator: MM micro-ops in every variant (direct and
prefetched weights, 1 to 5 tokens, with and without bias and mask, partial beats and row groups,
stalls on the HBM streams and the vector-buffer ports), every output bit-exact with
`hw.numerics` (sim/mpu/cocotb_mpu.py)."""

from __future__ import annotations

import json

import pytest

from sim import runner
from sim.mpu import top

SIMULATOR = "verilator"
pytestmark = pytest.mark.simulator(SIMULATOR)


@pytest.fixture
def build(sim_build):
    return sim_build(top, SIMULATOR, "mpu")


CASES = {
    # rows, cols, ntok, bias, mask, prefetched, pause
    "one_row_one_token": (1, 8, 1, False, False, False, 0.0),
    "direct_1_token": (32, 32, 1, False, False, False, 0.0),
    "direct_4_tokens": (32, 32, 4, False, False, False, 0.0),
    "direct_4_tokens_bias": (32, 32, 4, True, False, False, 0.0),
    "prefetched_1_token": (32, 32, 1, False, False, True, 0.0),
    "prefetched_4_tokens_bias": (32, 32, 4, True, False, True, 0.0),
    "two_tokens_partial_group": (24, 16, 2, True, False, False, 0.0),
    "ragged_rows_and_cols_masked": (13, 20, 3, True, True, False, 0.0),
    "long_rows_under_stalls": (40, 136, 5, True, True, True, 0.3),
    # the shape of tests/rtl/test_core_probe.py's MMs: layer 0's QKV projection
    "probe_shape_4_tokens_bias": (96, 32, 4, True, False, False, 0.0),
    "probe_shape_prefetched_under_stalls": (96, 32, 4, True, False, True, 0.5),
}


@pytest.mark.rtl
@pytest.mark.parametrize("name", list(CASES))
def test_mm_matches_numerics(build, name):
    rows, cols, ntok, bias, mask, prefetched, pause = CASES[name]
    sim, build_dir = build
    run_dir = build_dir / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    case = {"seed": sum(map(ord, name)), "rows": rows, "cols": cols, "ntok": ntok, "bias": bias,
            "mask": mask, "prefetched": prefetched, "pause": pause}
    runner.run(sim, build_dir, top.TOPLEVEL, "sim.mpu.cocotb_mpu", test_dir=run_dir,
               env={"TANDEM_MPU_CASE": json.dumps(case)})


@pytest.mark.rtl
def test_a_corrupted_output_word_fails_the_comparison(build, capfd):
    """The bench flips one bit of output word 5 as read from the vector buffer: the run must
    fail on that one word."""
    sim, build_dir = build
    run_dir = build_dir / "runs" / "corrupted"
    run_dir.mkdir(parents=True, exist_ok=True)
    case = {"seed": 1, "rows": 32, "cols": 32, "ntok": 1, "bias": False, "mask": False,
            "prefetched": False, "pause": 0.0, "corrupt": 5}
    with pytest.raises(SystemExit):
        runner.run(sim, build_dir, top.TOPLEVEL, "sim.mpu.cocotb_mpu", test_dir=run_dir,
                   env={"TANDEM_MPU_CASE": json.dumps(case)})
    out = capfd.readouterr().out
    assert "1 words differ" in out
    assert "token 0 row 5: got" in out
