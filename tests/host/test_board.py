"""Ladder rung 6: the `board` backend's driver code against the RTL, through PYNQ's calls.

`BoardCluster` runs unchanged; only its `pynq` module is `sim.pynq.api`, a PYNQ API answered by
a cocotb simulation of the kernel's Verilog: the control registers through cocotbext-axi's
AXI4-Lite master, every m_axi port answered by a cocotbext-axi RAM (random pauses on every
channel) in the HBM bank the xclbin's link.cfg binds it to. The driver's code runs in a
`cocotb.task.bridge` thread; the functions named `_job_*` below are what runs there.

One simulation session serves the module: a tiny random GPT-2 generated through
`make_backend("board", ...)` (tokens and the memory read back against the `isa` backend,
bit-exact), with a link.cfg that binds the ports to other banks than their index; the register
writes the driver made; a program that never halts (ap_done timeout); a program that jumps
outside itself (the kernel's fault). The card build is cached under build/sim/verilator/.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

from host.cli import main
from host.errors import UsageError
from host.runtime import GenerationRequest, make_backend
from host.runtime.board import BoardCluster, BoardError, import_pynq, pynq_bank
from host.runtime.cluster_backend import ClusterBackend
from hw.config import PRESETS, load_config
from hw.isa import Instr
from hw.regmap import CONTROL_BITS, regmap
from hw.vitis import connectivity_cfg, port_banks
from models.testing import hf_checkpoint

PROMPT = [11, 42, 5, 80]  # the model below generates two different tokens from it
NEW_TOKENS = 6
#: port -> bank of the session's link.cfg: no port in the bank of its own index
PERMUTED = {0: 7, 1: 2, 2: 30, 3: 0}


# -- jobs: these run inside the simulation, in a cocotb.bridge thread ------------------------

def _job_generate(checkpoint: str, xclbin: str, out: str) -> dict:
    import models
    from sim.pynq import api

    model = models.load_model(checkpoint)
    # simulated time passes slowly: the 60 s that suit a card are not enough here
    backend = make_backend("board", model, config="tiny", devices=1, xclbin=xclbin, pynq=api,
                           timeout_s=600)
    try:
        steps = list(backend.stream(GenerationRequest(list(PROMPT), NEW_TOKENS)))
    except BaseException:
        backend.cluster.close()
        raise
    cluster = backend.cluster
    dev = cluster.devices[0]
    # what is in the card's memory now, read back through the buffers
    for buf in dev.buffers:
        buf.sync_from_device()
    np.savez(out, **{f"image{p}": cluster.image(0).channels[p]
                     for p in range(cluster.config.hbm_ports)},
             **{f"buffer{p}": np.asarray(buf) for p, buf in enumerate(dev.buffers)})
    return {"tokens": [s.token for s in steps], "steps": [s.to_json() for s in steps],
            "counters": cluster.counters(), "writes": dev.ip.writes,
            "addresses": [buf.device_address for buf in dev.buffers], "banks": dev.banks,
            "mem": {b: [dev.overlay.mem_dict[b]["base_address"], dev.overlay.mem_dict[b]["size"]]
                    for b in dev.banks},
            "program_offset": cluster.program_offset(0), "program_words": len(dev.program),
            "describe": backend.describe(), "closed": _close(cluster)}


def _close(cluster: BoardCluster) -> bool:
    cluster.close()
    return all(not dev.buffers for dev in cluster.devices)


def _job_run(xclbin: str, program: list, timeout_s: float) -> dict:
    """Run `program` ([op, args] pairs) on card 0 through the driver; its counters."""
    from sim.pynq import api

    cluster = BoardCluster(load_config("tiny", 1), xclbin, pynq=api, timeout_s=timeout_s)
    cluster.load([[Instr(op, args) for op, args in program]], None)
    try:
        cluster.start()
        cluster.wait()
        return cluster.counters()
    finally:
        cluster.close()


# -- the session ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from sim.pynq import Session, sim_platform

    tmp = tmp_path_factory.mktemp("board")
    config = load_config("tiny", 1)
    card = Session(config, work_dir=tmp / "card")
    text = connectivity_cfg(config, platform=sim_platform(config))
    for port, bank in PERMUTED.items():
        text = text.replace(f".m_axi_hbm{port}:HBM[{port}]\n", f".m_axi_hbm{port}:HBM[{bank}]\n")
    xclbin = card.xclbin("permuted", link_cfg=text)
    checkpoint = tmp / "model"
    model = hf_checkpoint(checkpoint, vocab=97, n_pos=24, n_embd=32, n_layer=1, n_head=2, seed=3)
    jobs = [
        {"name": "generate", "fn": f"{__name__}:_job_generate",
         "args": {"checkpoint": str(checkpoint), "xclbin": str(xclbin),
                  "out": str(tmp / "generate.npz")}},
        # never halts: the driver must give up, and say so
        {"name": "timeout", "fn": f"{__name__}:_job_run",
         "args": {"xclbin": str(xclbin), "program": [["JMP", {"target": 0}]], "timeout_s": 1.0}},
        # after the timeout, loading the xclbin again resets the kernel; then it faults
        {"name": "fault", "fn": f"{__name__}:_job_run",
         "args": {"xclbin": str(xclbin), "program": [["NOP", {}], ["JMP", {"target": 100}]],
                  "timeout_s": 30.0}},
        {"name": "halt", "fn": f"{__name__}:_job_run",
         "args": {"xclbin": str(xclbin), "program": [["NOP", {}], ["HALT", {}]],
                  "timeout_s": 30.0}},
    ]
    results = card.run_jobs(jobs, pauses=True, seed=3)
    isa = ClusterBackend(model, config)
    isa_steps = list(isa.stream(GenerationRequest(list(PROMPT), NEW_TOKENS)))
    memory = np.load(tmp / "generate.npz") if (tmp / "generate.npz").is_file() else None
    return {"results": results, "isa": isa, "isa_steps": isa_steps, "config": config,
            "memory": memory, "xclbin": xclbin}


def _value(session, name: str):
    result = session["results"][name]
    assert "error" not in result, result.get("traceback")
    assert not result["violations"], result["violations"][:4]
    return result["value"]


def _differing_bytes(a: np.ndarray, b: np.ndarray) -> list[int]:
    n = max(len(a), len(b))
    return np.flatnonzero(np.pad(a, (0, n - len(a))) != np.pad(b, (0, n - len(b)))).tolist()


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.simulator("verilator")
def test_board_tokens_and_memory_equal_isa(session):
    got = _value(session, "generate")
    assert got["tokens"] == [s.token for s in session["isa_steps"]]
    isa = session["isa"]
    memory = session["memory"]
    for p in range(session["config"].hbm_ports):
        differ = _differing_bytes(memory[f"image{p}"], isa.cluster.image(0).channels[p])
        assert not differ, f"port {p}: {len(differ)} bytes differ, first at {differ[:8]}"
        # the buffer itself, beyond the image: zeros, and the program in port 0
        buf = memory[f"buffer{p}"]
        end = got["program_offset"] if p == 0 else len(buf)
        assert not _differing_bytes(buf[:end], isa.cluster.image(0).channels[p])
    assert got["counters"]["cycles"] > 0
    assert all(s["run_cycles"] == got["counters"]["cycles"] for s in got["steps"])
    assert got["describe"]["backend"] == "board"


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.simulator("verilator")
def test_board_buffers_lie_in_the_banks_of_link_cfg(session):
    got = _value(session, "generate")
    assert got["banks"] == [f"HBM{PERMUTED[p]}" for p in range(len(PERMUTED))]
    for p, address in enumerate(got["addresses"]):
        base, size = got["mem"][f"HBM{PERMUTED[p]}"]
        assert base <= address < base + size


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.simulator("verilator")
def test_board_writes_the_arguments_at_the_regmap_offsets(session):
    got = _value(session, "generate")
    rm = regmap(session["config"])
    writes = [tuple(w) for w in got["writes"]]
    expect = {"program": got["addresses"][0] + got["program_offset"],
              "program_words": got["program_words"], "device": 0, "devices": 1,
              **{f"hbm{p}": a for p, a in enumerate(got["addresses"])}}
    want = []
    for name, value in expect.items():
        reg = rm[name]
        want += [(reg.offset + 4 * w, value >> (32 * w) & 0xFFFFFFFF) for w in range(reg.words)]
    want.append((rm["control"].offset, 1 << CONTROL_BITS["ap_start"]))
    assert writes == want


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.simulator("verilator")
def test_board_reports_an_ap_done_timeout(session):
    result = session["results"]["timeout"]
    assert result.get("type") == "BoardError", result
    assert not result["violations"]
    assert re.search(r"timeout: .*card\(s\) \[0\] did not raise ap_done within 1 s",
                     result["error"])


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.simulator("verilator")
def test_board_reports_the_kernels_fault(session):
    result = session["results"]["fault"]
    assert result.get("type") == "BoardError", result
    assert not result["violations"]
    assert re.search(r"card 0 faulted: code 1 at pc 100\b", result["error"]), result["error"]
    # the same driver runs a program that halts: the fault was the program's, not the card's
    assert _value(session, "halt")["cycles"] > 0


@pytest.mark.board
def test_board_generation_on_a_card(tmp_path):
    """The same generation on a real card, against the `isa` backend (needs the card)."""
    xclbin = os.environ.get("TANDEM_XCLBIN")
    if not xclbin:
        pytest.skip("no Alveo card configured: set TANDEM_XCLBIN to the .xclbin of a "
                    "`python -m hw.vitis` build (and TANDEM_CONFIG to its config, default u280)")
    pynq = pytest.importorskip("pynq", reason="PYNQ is not installed (pip install "
                               "'tandem[board]' on the card's machine)")
    config = load_config(os.environ.get("TANDEM_CONFIG", "u280"), 1)
    model = hf_checkpoint(tmp_path, vocab=97, n_pos=24, n_embd=32, n_layer=1, n_head=2, seed=3)
    request = GenerationRequest(list(PROMPT), NEW_TOKENS)
    board = make_backend("board", model, config=config.name, devices=1, xclbin=xclbin,
                         pynq=pynq)
    tokens = [s.token for s in board.stream(request)]
    isa = ClusterBackend(model, config)
    assert tokens == [s.token for s in isa.stream(request)]
    for p in range(config.hbm_ports):
        assert not _differing_bytes(board.cluster.image(0).channels[p],
                                    isa.cluster.image(0).channels[p]), f"port {p}"
    board.cluster.close()


# -- the driver's own logic, without a simulation ---------------------------------------------

def test_port_banks_follow_the_connectivity():
    config = PRESETS["u280"]
    banks = port_banks(connectivity_cfg(config))
    assert banks == {f"m_axi_hbm{k}": f"HBM[{k}]" for k in range(config.hbm_ports)}
    text = "[connectivity]\nsp=tandem_1.m_axi_hbm0:HBM[5]\nsp=other_1.m_axi_hbm1:HBM[6]\n"
    assert port_banks(text) == {"m_axi_hbm0": "HBM[5]"}
    cluster = BoardCluster(load_config("tiny", 1), "none.xclbin", link_cfg=text)
    with pytest.raises(BoardError, match="binds no bank to m_axi_hbm1 of tandem_1"):
        cluster.port_banks()


def test_pynq_bank_names():
    assert pynq_bank("HBM[12]") == "HBM12"
    with pytest.raises(BoardError, match="cannot name memory bank"):
        pynq_bank("HBM12")


def test_missing_pynq_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)  # what `import pynq` sees without PYNQ
    with pytest.raises(BoardError, match=r"pip install 'tandem\[board\]'"):
        import_pynq()


def test_board_backend_needs_an_xclbin(capsys):
    with pytest.raises(UsageError, match="--xclbin"):
        make_backend("board", None)
    args = ["generate", "--prompt-ids", "1,2", "--max-new-tokens", "1"]
    assert main([*args, "--backend", "board"]) == 2
    assert "--backend board needs --xclbin" in capsys.readouterr().err
    assert main([*args, "--backend", "isa", "--xclbin", "x.xclbin"]) == 2
    assert "--xclbin applies to --backend board" in capsys.readouterr().err
