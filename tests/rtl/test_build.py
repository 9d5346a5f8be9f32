# amaranth: UnusedElaboratable=no
# (constructors that raise leave half-built components behind; they are meant to be unused)
"""`tandem rtl build`: Verilog for a config, linted by Verilator; and its input checks."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from amaranth.hdl import Instance

from host.cli import main
from hw.config import TINY
from rtl.build import Cluster
from rtl.verilog import to_verilog
from sim import runner


def test_cluster_needs_a_positive_device_count():
    with pytest.raises(ValueError, match=r"^devices must be a positive integer, not 0$"):
        Cluster(TINY, 0)


@pytest.mark.parametrize("prefix", ["ring", "ring_tx", "ring_rx__tdata", ""])
def test_cluster_keeps_the_ring_inside(prefix):
    with pytest.raises(ValueError, match=rf"^the ring ports stay inside the cluster; expose "
                                         rf"'{prefix}' cannot pass them out$"):
        Cluster(TINY, 2, expose=(prefix,))


def test_cluster_puts_a_link_on_every_hop_and_exposes_the_traces():
    """With a link factory, kernel d's ring_tx reaches kernel d + 1's ring_rx only through
    link d (called with d, the transmitting and the receiving side); exposed trace ports are
    passed out per device, and the board's ports are unchanged."""
    hops = []

    def link(d, tx, rx):
        hops.append(d)
        return Instance("cable", i_s_tdata=tx["tdata"], o_s_tready=tx["tready"],
                        o_m_tdata=rx["tdata"], i_m_tready=rx["tready"])

    cluster = Cluster(TINY, 3, link=link, expose=("trace_",))
    board = Cluster(TINY, 3)
    assert {n for n in cluster.signature.members if "trace_" not in n} == set(
        board.signature.members)
    assert {f"dev{d}_trace_issue" for d in range(3)} <= set(cluster.signature.members)
    text = to_verilog(cluster, "top")
    assert hops == [0, 1, 2]
    for d in range(3):
        nxt = (d + 1) % 3
        assert re.search(rf"cable link{d} \(.*?\.m_tdata\(link{d}_rx_tdata\).*?\.s_tdata\("
                         rf"link{d}_tdata\)", text, re.DOTALL)
        kernel = re.search(rf"tandem_kernel kernel{nxt} \((.*?)\);", text, re.DOTALL)[1]
        assert f".ring_rx__tdata(link{d}_rx_tdata)" in kernel
        assert f".trace_issue(dev{nxt}_trace_issue)" in kernel


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
