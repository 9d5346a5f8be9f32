"""Suite-wide policy: `gpu` tests need CUDA, `board` tests an Alveo card and simulation tests
their HDL simulator; without them they are skipped with the reason, never silently deselected.

A test names the simulator it needs with `@pytest.mark.simulator("verilator")` (or on its
module's `pytestmark`), or through a `simulator` parameter; `sim_build` builds each cocotb
design once per session and hands every test that asks the same build.
"""

from __future__ import annotations

import functools
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _enable_triton_interpreter() -> None:
    """Without CUDA, run the Triton kernels of `gpu_kernels` under Triton's CPU interpreter.

    `@triton.jit` reads TRITON_INTERPRET when the kernel modules are imported, so it is set here,
    before any test module imports them. With CUDA the kernels compile for the GPU as usual.
    """
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_enable_triton_interpreter()


def _cuda_reason() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "needs CUDA: torch.cuda.is_available() is False"


def _board_reason() -> str | None:
    if os.environ.get("TANDEM_XCLBIN"):
        return None
    return "needs an Alveo card: set TANDEM_XCLBIN to a built xclbin on a machine with XRT"


@functools.cache
def _simulator_reasons() -> dict[str, str | None]:
    from sim.toolchain import available_simulators

    return available_simulators()


def _simulators_needed(item) -> list[str]:
    """The simulators a test runs on: its `simulator` markers and its `simulator` parameter."""
    names = [m.args[0] for m in item.iter_markers("simulator")]
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "simulator" in callspec.params:
        names.append(callspec.params["simulator"])
    return names


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "simulator(name): needs that HDL simulator (skipped, with why, without it)")


def pytest_collection_modifyitems(config, items):
    reasons = {}
    for item in items:
        for marker, probe in (("gpu", _cuda_reason), ("board", _board_reason)):
            if marker in item.keywords:
                if marker not in reasons:
                    reasons[marker] = probe()
                if reasons[marker]:
                    item.add_marker(pytest.mark.skip(reason=reasons[marker]))
        for simulator in _simulators_needed(item):
            reason = _simulator_reasons().get(simulator, f"unknown simulator {simulator!r}")
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
                break


# -- cocotb builds, one per design and simulator for the whole session ------------------------


@pytest.fixture(scope="session")
def sim_build():
    """`sim_build(top, simulator, name, *args)` -> (runner, build dir): the design of a
    `sim.<bench>.top` module compiled by `top.build(simulator, build_dir, *args)` under
    build/sim/<simulator>/<name>, once per session (Verilator's C++ compile is the slow step;
    the build folder also survives the session, and an unchanged design rebuilds in seconds).
    Skips the calling test, with the reason, when the simulator is missing."""
    from sim.runner import REPO_ROOT

    cache: dict[tuple[str, str], tuple] = {}

    def get(top, simulator: str, name: str, *args):
        reason = _simulator_reasons()[simulator]
        if reason:
            pytest.skip(reason)
        key = (simulator, name)
        if key not in cache:
            build_dir = REPO_ROOT / "build" / "sim" / simulator / name
            cache[key] = (top.build(simulator, build_dir, *args), build_dir)
        return cache[key]

    return get


# -- shared fixtures: a tiny corpus and a tiny HF-format checkpoint with its own tokenizer ----


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A prepared corpus from the first 60 stdlib files, with a 512-token BPE."""
    from models.data import prepare_corpus

    out = tmp_path_factory.mktemp("corpus")
    prepare_corpus(out, vocab_size=512, val_fraction=0.2, limit_files=60, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_corpus):
    """A randomly initialised 2-layer GPT-2 (3 heads) saved with the tiny corpus' tokenizer."""
    import shutil

    import torch

    from models import GPT2Config, GPT2LMHead

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=512, n_positions=64, n_embd=48, n_layer=2, n_head=3)
    out = tmp_path_factory.mktemp("ckpt")
    GPT2LMHead(config).save_pretrained(out)
    shutil.copyfile(tiny_corpus / "tokenizer.json", out / "tokenizer.json")
    return out
