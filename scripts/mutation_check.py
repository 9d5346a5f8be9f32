"""Deliberate bugs against the tests that exist to catch them.

    python scripts/mutation_check.py [--only NAME ...] [--rev REV | --working-tree] [--keep]

Exports the committed tree (`git archive HEAD`, another revision with --rev, e.g. one from
before a test was strengthened to see what it missed, or the working tree's tracked files with
--working-tree) into a temporary directory, never touching the checkout. First runs every
target test file there unchanged (each must pass), then applies each mutation below alone,
runs its test file, and restores the file. A mutation is caught when its test file fails.
Prints one line per mutation and exits 1 unless the baseline passes and every mutation is
caught. Takes ~4 minutes on 2 cores (every target file runs twice), plus the RTL simulation of
the slow mutation's end-to-end test (a Verilator build from scratch, several minutes); not part
of `make test`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # file to mutate, relative to the repository root
    old: str  # exact text, found exactly once
    new: str
    tests: str  # the test file (or one test of it) that must fail
    why: str
    slow: bool = False  # its test is marked slow (an RTL simulation): run it anyway


MUTATIONS = [
    Mutation(
        "c_proj-shifted-one-column", "host/compiler/images.py",
        'w_proj = t(p + "attn.c_proj.weight").T[out_c]',
        'w_proj = t(p + "attn.c_proj.weight").T[(out_c + 1) % c]',
        "tests/host/test_compiler.py::test_weights_land_in_the_planned_layout",
        "each device's slice of attn.c_proj taken one output column to the right"),
    Mutation(
        "vbuf-read-port-never-granted", "rtl/core/vbuf.py",
        "            for k in reversed(range(len(self.read))):\n"
        "                with m.If(self.read[k].req.valid & (rd_banks[k] == b)):",
        "            for k in reversed(range(len(self.read) - 1)):\n"
        "                with m.If(self.read[k].req.valid & (rd_banks[k] == b)):",
        "tests/rtl/test_vbuf.py",
        "the arbiters leave the last read port out: never granted, never answered"),
    Mutation(
        "batch-window-reversed", "models/data/dataset.py",
        "data[s : s + block_size + 1] for s", "data[s : s + block_size + 1][::-1] for s",
        "tests/models/test_data.py",
        "training windows read backwards (y is still x shifted by one)"),
    Mutation(
        "expert-loads-reversed", "host/compiler/moe.py",
        "[float(c) for c in counts.tolist()]", "[float(c) for c in counts.flip(0).tolist()]",
        "tests/host/test_moe_fpga.py",
        "measured expert loads attributed to the wrong experts"),
    Mutation(
        "residual-moe-coefficients-swapped", "models/moe/layer.py",
        "out * coef[:, 0:1] + self.residual_mlp(x) * coef[:, 1:2]",
        "out * coef[:, 1:2] + self.residual_mlp(x) * coef[:, 0:1]",
        "tests/models/test_moe_gpt.py",
        "PR-MoE mixes the expert and residual branches with each other's weights"),
    Mutation(
        "gelu-reference-constant", "hw/numerics.py",
        "(x64 + 0.044715 * x64**3)", "(x64 + 0.0447 * x64**3)",
        "tests/hw/test_numerics_functions.py",
        "the float64 GELU every accuracy figure is measured against is not GPT-2's"),
    Mutation(
        "fp16-rounding-truncates", "hw/numerics.py",
        "return _canon16(_ftz32(_f32(x32, \"x32\")).astype(np.float16))",
        "x = _ftz32(_f32(x32, \"x32\"))\n"
        "    y = x.astype(np.float16)\n"
        "    y = np.where(np.abs(y.astype(np.float32)) > np.abs(x),\n"
        "                 np.nextafter(y, np.float16(0)), y)\n"
        "    return _canon16(y)",
        "tests/host/test_isa_backend.py::test_random_configs_agree_with_golden",
        "FP16 results rounded toward zero instead of to nearest (a biased FP16 unit)"),
    Mutation(
        "dma-stream-latency-dropped", "hw/perf.py",
        "    occ = _stream_cycles(ceil_div(beats, cfg.hbm_ports), cfg)\n"
        "    return Cost(spec.engine, occ, _dma_latency(cfg), \"dma\",",
        "    occ = _stream_cycles(ceil_div(beats, cfg.hbm_ports), cfg)\n"
        "    return Cost(spec.engine, occ, cfg.hbm_latency_cycles, \"dma\",",
        "tests/rtl/test_core_e2e.py::test_cycles_are_within_5_percent_of_the_timing_model",
        "the timing model forgets the DMA engine's own latency on LOADV/STOREV (6 cycles on "
        "tiny), which the 5% total alone did not see", slow=True),
]


def export_tree(dest: Path, working_tree: bool, rev: str = "HEAD") -> None:
    if working_tree:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for rel in filter(None, files):
            src = REPO / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        return
    archive = dest / ".export.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", rev], cwd=REPO, check=True, stdout=out)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()


def run_tests(tree: Path, tests: str, slow: bool = False) -> tuple[bool, float, str]:
    """(passed, seconds, last lines of output) of one test file in `tree` (its slow tests
    too when `slow`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    marks = [] if slow else ["-m", "not slow"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           *marks, tests], cwd=tree, env=env, capture_output=True, text=True)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return proc.returncode == 0, time.monotonic() - start, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these mutations (names as printed)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rev", default="HEAD", help="the revision to export (default HEAD)")
    where.add_argument("--working-tree", action="store_true",
                       help="copy the tracked files as they are now instead of a revision")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree")
    args = parser.parse_args(argv)
    chosen = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
        if unknown:
            print(f"mutation_check: unknown mutation {', '.join(unknown)}", file=sys.stderr)
            return 2
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if not args.working_tree and subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{args.rev}^{{commit}}"], cwd=REPO,
            capture_output=True).returncode:
        print(f"mutation_check: --rev {args.rev} is not a commit", file=sys.stderr)
        return 2
    tree = Path(tempfile.mkdtemp(prefix="tandem-mutants-"))
    ok = True
    try:
        export_tree(tree, args.working_tree, args.rev)
        print(f"tree: {'working tree' if args.working_tree else args.rev} in {tree}")
        for tests, slow in dict.fromkeys((m.tests, m.slow) for m in chosen):
            passed, seconds, tail = run_tests(tree, tests, slow)
            print(f"baseline  {'pass' if passed else 'FAIL'}  {seconds:6.1f} s  {tests}")
            if not passed:
                print("  " + tail.replace("\n", "\n  "))
                ok = False
        if not ok:
            print("the unmutated tree fails; mutations not run")
            return 1
        for m in chosen:
            target = tree / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                print(f"{m.name}: STALE (the text to mutate is not in {m.path} exactly once)")
                ok = False
                continue
            target.write_text(original.replace(m.old, m.new))
            try:
                passed, seconds, tail = run_tests(tree, m.tests, m.slow)
            finally:
                target.write_text(original)
            verdict = "caught" if not passed else "MISSED"
            ok &= not passed
            print(f"{m.name:36s} {verdict:6s} {seconds:6.1f} s  {m.tests}  ({m.why})")
        print("all mutations caught" if ok else "some mutations were not caught")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {tree}")
        else:
            shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
