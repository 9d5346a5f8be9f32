# amaranth: UnusedElaboratable=no
# (constructors that raise leave half-built components behind; they are meant to be unused)
"""`tandem rtl build`: Verilog for a config, linted by Verilator; and its input checks."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from host.cli import main
from hw.config import TINY
from rtl.build import Cluster
from sim import runner


def test_cluster_needs_a_positive_device_count():
    with pytest.raises(ValueError, match=r"^devices must be a positive integer, not 0$"):
        Cluster(TINY, 0)


def test_bad_config_is_one_line(tmp_path, capsys):
    assert main(["rtl", "build", "--config", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "neither a preset" in err


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.simulator("verilator")
def test_tiny_cluster_of_two_lints_clean(capsys):
    # under build/ so the minute-long kernel conversion is reused while the RTL is unchanged
    out = runner.REPO_ROOT / "build" / "rtl-build" / "tiny-2"
    assert main(["rtl", "build", "--config", "tiny", "--devices", "2", "--out", str(out)]) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["tandem_kernel.v", "tandem_cluster.v",
                                                       "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["devices"] == 2
    assert manifest["config"]["name"] == "tiny"
    assert {r["name"] for r in manifest["regmap"]["registers"]} >= {"control", "program",
                                                                     "hbm0", "hbm3"}
    cluster = (out / "tandem_cluster.v").read_text()
    assert len(re.findall(r"^\s*tandem_kernel\s+kernel\d", cluster, re.MULTILINE)) == 2
    # the ring: kernel 0 transmits to kernel 1 and kernel 1 to kernel 0
    assert re.search(r"\.ring_tx__tdata\(link0_tdata\)", cluster)
    assert len(re.findall(r"\.ring_rx__tdata\(link[01]_tdata\)", cluster)) == 2
    lint = subprocess.run(
        ["verilator", "--lint-only", "-Wno-fatal", "--top-module", "tandem_cluster",
         str(out / "tandem_kernel.v"), str(out / "tandem_cluster.v")],
        capture_output=True, text=True, timeout=600, check=False)
    errors = [line for line in lint.stderr.splitlines() if line.startswith("%Error")]
    assert lint.returncode == 0, "\n".join(errors[:20]) or lint.stderr[-2000:]
    assert not errors
    warnings = len([line for line in lint.stderr.splitlines() if line.startswith("%Warning")])
    print(f"verilator lint: 0 errors, {warnings} warnings")


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.simulator("verilator")
def test_u280_cluster_of_two_lints_clean(capsys):
    """The full-size config: 32 HBM ports, 32 lanes of 32, a 4M-word vector buffer. Its
    conversion and lint take far longer than CI's budget (see scripts/results/resources_core.md
    for the times measured), so it runs only when asked for with TANDEM_LINT_U280=1."""
    if os.environ.get("TANDEM_LINT_U280") != "1":
        pytest.skip("the u280 kernel takes too long to convert and lint for CI; set "
                    "TANDEM_LINT_U280=1 to run it")
    out = runner.REPO_ROOT / "build" / "rtl-build" / "u280-2"
    assert main(["rtl", "build", "--config", "u280", "--devices", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["name"] == "u280"
    assert manifest["config"]["hbm_ports"] == 32
    cluster = (out / "tandem_cluster.v").read_text()
    assert len(re.findall(r"^\s*tandem_kernel\s+kernel\d", cluster, re.MULTILINE)) == 2
    lint = subprocess.run(
        ["verilator", "--lint-only", "-Wno-fatal", "--top-module", "tandem_cluster",
         str(out / "tandem_kernel.v"), str(out / "tandem_cluster.v")],
        capture_output=True, text=True, timeout=3600, check=False)
    errors = [line for line in lint.stderr.splitlines() if line.startswith("%Error")]
    assert lint.returncode == 0, "\n".join(errors[:20]) or lint.stderr[-2000:]
    assert not errors
