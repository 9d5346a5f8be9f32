"""`hw.outdir`: the rules of every command that writes a directory, on the helper and through
the commands (upcycle, compile, data, train, prune-experts, rtl build, python -m hw.vitis)."""

from __future__ import annotations

import json
import os

import pytest

from host.cli import main
from hw.outdir import MARKER, OutputDirError, check_output_dir, output_dir
from hw.vitis.__main__ import main as vitis_main


def _siblings(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_output_is_written_whole_and_marked(tmp_path):
    out = tmp_path / "out"
    with output_dir(out, "demo") as tmp:
        assert tmp != out
        assert tmp.parent == tmp_path
        (tmp / "a.txt").write_text("a")
        assert not out.exists()  # nothing at --out until the end
    assert (out / "a.txt").read_text() == "a"
    assert json.loads((out / MARKER).read_text()) == {"command": "demo"}
    assert _siblings(tmp_path, "out") == []


def test_failure_leaves_nothing_and_keeps_the_old_output(tmp_path):
    out = tmp_path / "out"
    with output_dir(out, "demo") as tmp:
        (tmp / "old.txt").write_text("old")

    def half_write():
        with output_dir(out, "demo") as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        half_write()
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "old.txt"]
    assert _siblings(tmp_path, "out") == []


def test_a_new_output_replaces_the_old_one_of_the_same_command(tmp_path):
    out = tmp_path / "out"
    with output_dir(out, "demo") as tmp:
        (tmp / "old.txt").write_text("old")
    with output_dir(out, "demo") as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "new.txt"]
    assert _siblings(tmp_path, "out") == []


def test_keep_existing_starts_from_the_old_files(tmp_path):
    out = tmp_path / "out"
    with output_dir(out, "demo") as tmp:
        (tmp / "cache").write_text("c")
    with output_dir(out, "demo", keep_existing=True) as tmp:
        assert (tmp / "cache").read_text() == "c"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "must name a directory, not an empty string"),
        ("file", "is an existing file"),
        ("foreign", "non-empty directory that `demo` did not write; pass --force"),
        ("other-command", "non-empty directory that `demo` did not write"),
        ("is-input", "is the input"),
        ("inside-input", "is the input .* or lies inside it"),
        ("contains-input", "contains the input"),
        ("parent-is-file", "cannot be created: .* is a file"),
    ],
)
def test_refusals(tmp_path, case, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "w").write_text("weights")
    out, inputs = tmp_path / "out", [src]
    if case == "empty":
        out = ""
    elif case == "file":
        out.write_text("x")
    elif case == "foreign":
        out.mkdir()
        (out / "mine").write_text("x")
    elif case == "other-command":
        out.mkdir()
        (out / MARKER).write_text(json.dumps({"command": "other"}))
    elif case == "is-input":
        out = src
    elif case == "inside-input":
        out = src / "sub"
    elif case == "contains-input":
        out = tmp_path
    elif case == "parent-is-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "sub"
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(OutputDirError, match=message), output_dir(out, "demo", inputs=inputs):
        pytest.fail("the body must not run")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing made or removed


def test_force_replaces_a_foreign_directory_but_never_the_input(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine").write_text("x")
    assert check_output_dir(out, "demo", force=True) == out
    with pytest.raises(OutputDirError, match="is the input"):
        check_output_dir(out, "demo", inputs=[out], force=True)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only directories; the parent-is-a-file "
                    "case covers an --out that cannot be created")
def test_a_read_only_parent_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputDirError, match="is not writable"):
            check_output_dir(ro / "out", "demo")
    finally:
        ro.chmod(0o755)


# -- through the commands ----------------------------------------------------------------------


def _one_line_exit_2(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in err


def test_upcycle_onto_its_source_is_refused_and_the_source_kept(tmp_path, tiny_checkpoint,
                                                                   capsys):
    """The data-loss bug: the source was rewritten as an FP32 MoE checkpoint, mode 0600."""
    before = {p.name: (p.read_bytes(), p.stat().st_mode) for p in tiny_checkpoint.iterdir()}
    _one_line_exit_2(["upcycle", "--from", str(tiny_checkpoint), "--out", str(tiny_checkpoint),
                      "--experts", "2"], capsys, "is the input")
    after = {p.name: (p.read_bytes(), p.stat().st_mode) for p in tiny_checkpoint.iterdir()}
    assert after == before


def test_upcycle_out_an_existing_file(tmp_path, tiny_checkpoint, capsys):
    file = tmp_path / "f"
    file.write_text("x")
    _one_line_exit_2(["upcycle", "--from", str(tiny_checkpoint), "--out", str(file),
                      "--experts", "2"], capsys, "is an existing file")
    assert file.read_text() == "x"


def test_upcycle_refuses_an_unfittable_expert_count_before_allocating(tmp_path, tiny_checkpoint,
                                                                       capsys):
    _one_line_exit_2(["upcycle", "--from", str(tiny_checkpoint), "--out", str(tmp_path / "o"),
                      "--experts", "100000000"], capsys, "GB is free; use fewer experts")
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary sibling left


def test_upcycle_estimate_is_the_built_size(tiny_checkpoint):
    from models import load_model
    from models.moe.upcycle import upcycle, upcycle_bytes

    moe = upcycle(load_model(tiny_checkpoint), 3, every=1, top_k=1)
    assert upcycle_bytes(moe.config) == 4 * sum(p.numel() for p in moe.parameters())


def test_compile_out_rules(tmp_path, tiny_checkpoint, capsys):
    file = tmp_path / "f"
    file.write_text("x")
    _one_line_exit_2(["compile", "--model", str(tiny_checkpoint), "--out", str(file)], capsys,
                     "is an existing file")
    _one_line_exit_2(["compile", "--model", str(tiny_checkpoint), "--out", str(file / "d")],
                     capsys, "cannot be created")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    _one_line_exit_2(["compile", "--model", str(tiny_checkpoint), "--out", str(foreign)], capsys,
                     "pass --force")
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    out = tmp_path / "c"
    assert main(["compile", "--model", str(tiny_checkpoint), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert all(os.path.isfile(f) for f in summary["files"])  # the final paths, not the temp
    assert main(["compile", "--model", str(tiny_checkpoint), "--out", str(out)]) == 0  # again
    capsys.readouterr()


@pytest.mark.parametrize(("flags", "message"), [
    (["--input-len", "-5"], "--input-len must be at least 1, not -5"),
    (["--input-len", "0"], "--input-len must be at least 1, not 0"),
    (["--output-len", "-3"], "--output-len must be at least 1, not -3"),
    (["--output-len", "100000000"], "exceeds the model's context (64)"),
])
def test_compile_trace_lengths_are_checked_before_writing(tmp_path, tiny_checkpoint, capsys,
                                                          flags, message):
    out = tmp_path / "c"
    _one_line_exit_2(["compile", "--model", str(tiny_checkpoint), "--out", str(out), "--trace",
                      *flags], capsys, message)
    assert list(tmp_path.iterdir()) == []  # neither --out nor a temporary sibling


def test_train_and_data_out_rules(tmp_path, tiny_corpus, capsys):
    _one_line_exit_2(["data", "--out", str(tiny_corpus), "--vocab-size", "300"], capsys,
                     "pass --force")
    _one_line_exit_2(["train", "--data", str(tiny_corpus), "--out", str(tiny_corpus / "run")],
                     capsys, "is the input")
    _one_line_exit_2(["train", "--data", str(tiny_corpus), "--out", str(tmp_path / "r"),
                      "--resume"], capsys, "cannot resume")


def test_train_resume_continues_in_its_own_out(tmp_path, tiny_corpus, capsys):
    run = tmp_path / "run"
    small = ["--data", str(tiny_corpus), "--out", str(run), "--n-layer", "1", "--n-embd", "16",
             "--n-head", "2", "--block-size", "16", "--batch-size", "1", "--eval-interval", "1",
             "--eval-batches", "1", "--warmup-steps", "1"]
    assert main(["train", *small, "--max-steps", "2"]) == 0
    _one_line_exit_2(["train", *small, "--max-steps", "2"], capsys, "already holds a run")
    assert main(["train", *small, "--max-steps", "2", "--resume"]) == 0  # in its own --out
    capsys.readouterr()
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert json.loads((run / MARKER).read_text()) == {"command": "train"}
    assert _siblings(tmp_path, "run") == []


def test_vitis_out_rules(tmp_path, capsys):
    file = tmp_path / "f"
    file.write_text("x")
    assert vitis_main(["--config", "u280", "--out", str(file)]) == 2
    assert "is an existing file" in capsys.readouterr().err
    out = tmp_path / "v"
    assert vitis_main(["--config", "u280", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed
    assert all(os.path.isfile(p) for p in printed)
    assert vitis_main(["--config", "u280", "--out", str(out)]) == 0  # its own: replaced
    capsys.readouterr()
