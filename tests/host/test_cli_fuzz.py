"""Every option of every `tandem` subcommand, fed bad values, generated from the CLI's own
argparse specs (a new option is covered without anyone listing it).

For each option: a missing value, a wrong type, an empty string, zero, a negative number, NaN,
a huge number and infinity; for path options also an existing file, a directory whose parent
is a file, a read-only directory (where the test does not run as root: root writes anywhere)
and the command's input itself. The rest of the command line is the smallest valid one, with
options that keep real work tiny. The contract: exit 0, or exit 2 with exactly one line on
stderr; never a traceback; the shipped models are unchanged and nothing appears in the
repository (a relative --out such as `0` or `nan` lands in the test's working directory, a
temporary one). `main` runs in-process.

Two stand-ins keep it fast, and are the only ones: `serve` returns once the service is loaded
instead of listening (the server is tested in test_serving*.py), and `rtl build` writes a
placeholder instead of converting the kernel and the cluster to Verilog (a minute per run; the
conversion is tested in tests/rtl/test_build.py). Everything before them, and the output
directory, is real.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

import host.serving
import models
import rtl.build
from host.cli import build_parser, main

PRETRAINED = Path(models.__file__).parent / "pretrained"
REPO = Path(models.__file__).resolve().parent.parent

#: options whose value names a file or directory
PATH_OPTIONS = {"--model", "--out", "--data", "--config", "--tokenizer", "--from", "--xclbin",
                "--init-from", "--teacher", "--data-efficiency"}
BAD_NUMBERS = {"zero": "0", "negative": "-1", "nan": "nan", "huge": "99999999999999999999999",
               "infinite": "1e999"}
#: (command, option, value kind) that are valid but not small: a real request to do much work,
#: which the fuzz test cannot wait for. Each has its reason.
EXPENSIVE = {
    ("train", "--max-steps", "huge"): "a valid request for that many steps",
    ("train", "--grad-accum", "huge"): "a valid request for that many micro-batches a step",
    ("train", "--eval-batches", "huge"): "a valid request for that many validation batches",
    ("prune-experts", "--batches", "huge"): "a valid request for that many calibration batches",
    ("data", "--limit-files", "huge"): "valid: the whole standard library (minutes)",
    ("prune-experts", "--batch-size", "huge"): "a valid request for windows that large",
}
#: whole (command, value kind) pairs left out, with their reason; none at present (train's
#: huge sizes are refused by its memory estimate, models.sizing)
EXPENSIVE_KINDS: set[tuple[str, str]] = set()


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
            h.update(str(path.stat().st_mode).encode())
    return h.hexdigest()


def _commands(parser: argparse.ArgumentParser, prefix=()):
    """(command words, its parser) for every leaf subcommand."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, (*prefix, name))


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        yield action


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint, tiny_corpus):
    """The inputs every command line uses, in a temporary directory."""
    root = tmp_path_factory.mktemp("fuzz")
    moe = root / "moe"
    assert main(["upcycle", "--from", str(tiny_checkpoint), "--out", str(moe),
                 "--experts", "2", "--every", "2"]) == 0
    a_file = root / "a_file.txt"
    a_file.write_text("not a directory\n")
    readonly = root / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    yield {"root": root, "ckpt": tiny_checkpoint, "corpus": tiny_corpus, "moe": moe,
           "file": a_file, "readonly": readonly, "n": [0]}
    readonly.chmod(0o755)


def _fresh_out(world) -> str:
    world["n"][0] += 1
    return str(world["root"] / f"out{world['n'][0]}")


def _baseline(words: tuple, world) -> tuple[dict[str, str], list[str]]:
    """The smallest valid command line: {option: value} and extra flags."""
    ckpt, corpus = str(world["ckpt"]), str(world["corpus"])
    out = _fresh_out(world)
    lines = {
        ("generate",): {"--model": ckpt, "--prompt": "x = 1", "--max-new-tokens": "1"},
        ("serve",): {"--model": ckpt, "--port": "0"},
        ("perf",): {"--model": ckpt, "--config": "tiny", "--input-len": "2",
                    "--output-len": "1"},
        ("compile",): {"--model": ckpt, "--out": out},
        ("rtl", "build"): {"--out": out},
        ("train",): {"--data": corpus, "--out": out, "--n-layer": "1", "--n-embd": "16",
                     "--n-head": "2", "--block-size": "16", "--batch-size": "1",
                     "--max-steps": "1", "--eval-interval": "1", "--eval-batches": "1",
                     "--warmup-steps": "1"},
        ("data",): {"--out": out, "--vocab-size": "300", "--limit-files": "20",
                    "--val-fraction": "0.3"},
        ("eval",): {"--model": ckpt, "--data": corpus, "--json": None},
        ("upcycle",): {"--from": ckpt, "--out": out, "--experts": "2"},
        ("prune-experts",): {"--model": str(world["moe"]), "--data": corpus, "--out": out,
                             "--keep": "1", "--batches": "1", "--batch-size": "1"},
    }
    return dict(lines[words])


def _input_of(words: tuple, base: dict[str, str]) -> str | None:
    for opt in ("--model", "--from", "--data"):
        if opt in base:
            return base[opt]
    return None


def _cases(world):
    """(id, argv) for every command, option and bad value."""
    for words, parser in _commands(build_parser()):
        for action in _options(parser):
            opt = action.option_strings[-1] if action.option_strings[-1].startswith("--") \
                else action.option_strings[0]
            if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
                values = {"flag": None}
            elif action.choices is not None:
                values = {"missing": "<missing>", "empty": "", "unknown": "nope",
                          **{k: v for k, v in BAD_NUMBERS.items() if k in ("zero", "nan")}}
            else:
                values = {"missing": "<missing>", "empty": "", "wrong-type": "abc",
                          **BAD_NUMBERS}
                if opt in PATH_OPTIONS:
                    values.update({"file": "<file>", "under-a-file": "<file>/sub",
                                   "readonly": "<readonly>/sub", "input": "<input>",
                                   "nonexistent": "<root>/does-not-exist-<n>"})
            for kind, value in values.items():
                if (words[0], opt, kind) in EXPENSIVE or (words[0], kind) in EXPENSIVE_KINDS:
                    continue
                yield " ".join(words), words, opt, kind, value


def _argv(words, opt, kind, value, world) -> list[str] | None:
    base = _baseline(words, world)
    source = _input_of(words, base)
    if value is not None:
        value = (value.replace("<file>", str(world["file"]))
                 .replace("<readonly>", str(world["readonly"]))
                 .replace("<root>", str(world["root"]))
                 .replace("<n>", str(world["n"][0])))
        if value == "<input>":
            if source is None or opt == "--from" or (opt in ("--model", "--data")
                                                      and base.get(opt) == source):
                value = str(world["ckpt"])  # an input as the input: a valid run
            else:
                value = source
    base.pop(opt, None)
    if words == ("generate",) and opt == "--prompt-ids":
        base.pop("--prompt")  # the two are exclusive
    argv = [*words]
    for k, v in base.items():
        argv += [k] if v is None else [k, v]
    if kind == "flag":
        argv.append(opt)
    elif kind == "missing":
        argv.append(opt)  # last, so that argparse sees no value
    else:
        argv += [opt, value]
    return argv


def _run(argv, capsys) -> tuple[int | str, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    except Exception as e:  # a bug: reported with the others, not as the first one alone
        code = f"{type(e).__name__}: {e}"
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def stand_ins(monkeypatch, world):
    """See the module doc; and the working directory is a temporary one."""
    monkeypatch.setattr(host.serving, "serve", lambda service: None)

    def placeholder_kernel(config, path, name=rtl.build.KERNEL):
        Path(path).write_text(f"// {name}: placeholder for the fuzz test\n")
        return Path(path)

    monkeypatch.setattr(rtl.build, "kernel_verilog", placeholder_kernel)
    def placeholder_verilog(component, name):
        # the conversion it stands in for uses the component; an Elaboratable left unused warns
        # when the garbage collector gets to it, inside whichever test runs then
        component._MustUse__used = True
        return f"// {name}: placeholder for the fuzz test\n"

    monkeypatch.setattr(rtl.build, "to_verilog", placeholder_verilog)
    work = world["root"] / "cwd"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)


@pytest.mark.slow  # about a thousand command lines; minutes on a busy 2-core machine
def test_every_option_with_bad_values_is_exit_0_or_one_line_exit_2(world, capsys, stand_ins):
    before = _tree_hash(PRETRAINED)
    repo_before = sorted(p.name for p in REPO.iterdir())
    failures = []
    seconds: dict[str, float] = {}
    count = 0
    root_user = hasattr(os, "geteuid") and os.geteuid() == 0
    for name, words, opt, kind, value in _cases(world):
        if kind == "readonly" and root_user:
            continue  # root writes into a read-only directory; see the root test below
        argv = _argv(words, opt, kind, value, world)
        started = time.perf_counter()
        code, _, err = _run(argv, capsys)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
        count += 1
        lines = [line for line in err.splitlines() if line.strip()]
        if "Traceback" in err or code not in (0, 2) or (code == 2 and len(lines) != 1):
            failures.append(f"{name} {opt} {kind}: exit {code}, stderr {err[-400:]!r}")
    if os.environ.get("TANDEM_FUZZ_TIMES"):  # where the time goes, by command
        print(json.dumps({k: round(v, 1) for k, v in seconds.items()}), file=sys.__stderr__)
    assert count > 300  # every command's options were tried
    assert not failures, "\n".join(failures)
    assert _tree_hash(PRETRAINED) == before
    assert sorted(p.name for p in REPO.iterdir()) == repo_before


def test_out_in_a_read_only_place_is_one_line(world, capsys, tmp_path):
    """A directory the command cannot create is refused before any work, as one line."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        target = world["file"] / "sub"  # root may write anywhere; a file as parent stops it
    else:
        target = world["readonly"] / "sub"
    code, _, err = _run(["compile", "--model", str(world["ckpt"]), "--out", str(target)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "cannot be created" in err
    assert not target.exists()


def test_shipped_model_survives_every_writer_pointed_at_it(capsys, tmp_path):
    """The data-loss bug: `upcycle --from D --out D` rewrote the shipped model. Every command
    that writes a directory refuses its input (and what lies inside it) as --out."""
    shipped = PRETRAINED / "stdlib-code-4x256"
    before = _tree_hash(PRETRAINED)
    work = tmp_path / "copy"
    shutil.copytree(shipped, work)
    for argv in (
        ["upcycle", "--from", str(shipped), "--out", str(shipped), "--experts", "2"],
        ["upcycle", "--from", str(shipped), "--out", str(shipped / "sub"), "--experts", "2"],
        ["upcycle", "--from", str(shipped), "--out", str(PRETRAINED), "--experts", "2",
         "--force"],
        ["compile", "--model", str(shipped), "--out", str(shipped), "--force"],
        ["prune-experts", "--model", str(PRETRAINED / "stdlib-moe-4x256-e4"), "--data",
         str(work), "--out", str(PRETRAINED / "stdlib-moe-4x256-e4"), "--keep", "1"],
        ["train", "--data", str(work), "--out", str(work), "--max-steps", "1"],
    ):
        code, _, err = _run(argv, capsys)
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1, err
        assert "input" in err
    assert _tree_hash(PRETRAINED) == before
