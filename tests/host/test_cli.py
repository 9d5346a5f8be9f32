"""The `tandem` command line: help, generate's JSON and determinism, and bad input reported
as one line with exit code 2 and no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from host.cli import main
from models import load_model, load_tokenizer

TANDEM = [sys.executable, "-m", "host.cli"]


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*TANDEM, *args], capture_output=True, text=True, timeout=300,
                          env=env, check=False, **kw)


def test_help_lists_every_subcommand_with_one_line():
    out = _run("--help")
    assert out.returncode == 0
    from host.commands import COMMANDS

    lines = out.stdout.splitlines()
    assert {c.NAME for c in COMMANDS} >= {"generate", "serve", "perf", "compile", "train",
                                          "data", "eval"}
    for command in COMMANDS:
        line = next(line for line in lines if line.strip().startswith(command.NAME + " "))
        assert line.split(maxsplit=1) == [command.NAME, command.HELP]  # one line each


def test_generate_json_is_deterministic_and_complete(tiny_checkpoint):
    args = ("generate", "--model", str(tiny_checkpoint), "--prompt", "def f(x):",
            "--max-new-tokens", "12", "--temperature", "0.9", "--top-k", "20", "--seed", "5",
            "--json")
    first, second = _run(*args), _run(*args)
    assert first.returncode == 0, first.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["tokens"] == b["tokens"]
    assert len(a["tokens"]) == 12
    assert len(a["steps"]) == 12
    assert [s["token"] for s in a["steps"]] == a["tokens"]
    assert all(s["ms"] > 0 for s in a["steps"])
    tok = load_tokenizer(tiny_checkpoint)
    assert a["prompt_tokens"] == tok.encode("def f(x):")
    assert a["text"] == tok.decode(a["tokens"])
    assert a["backend"] == "torch"
    assert a["device"] in ("cpu", "cuda")
    # the same draw as the library call, so the CLI adds nothing of its own
    model = load_model(tiny_checkpoint)
    assert a["tokens"] == model.generate(a["prompt_tokens"], 12, temperature=0.9, top_k=20,
                                         seed=5)


def test_generate_text_mode_prints_continuation_and_speed(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt", "import os",
                 "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("import os")
    assert "5 tokens in" in out
    assert "tokens/s" in out


def test_prompt_ids_for_models_without_tokenizer(tmp_path, tiny_checkpoint, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_checkpoint, bare)
    (bare / "tokenizer.json").unlink()
    assert main(["generate", "--model", str(bare), "--prompt-ids", "1,2,3",
                 "--max-new-tokens", "4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prompt_tokens"] == [1, 2, 3]
    assert record["text"] is None
    assert main(["generate", "--model", str(bare), "--prompt", "x"]) == 2
    assert "ships no tokenizer; pass --prompt-ids" in capsys.readouterr().err


def _corrupt(ckpt, tmp_path, how):
    out = tmp_path / how
    shutil.copytree(ckpt, out)
    config = json.loads((out / "config.json").read_text())
    if how == "truncated":
        data = (out / "model.safetensors").read_bytes()
        (out / "model.safetensors").write_bytes(data[:100])
    elif how == "shape":
        config["n_embd"] = 60
    elif how == "type":
        config["model_type"] = "t5"
    (out / "config.json").write_text(json.dumps(config))
    return out


BAD_INPUT = [
    ("missing", "does not exist"),
    ("truncated", "corrupt or truncated"),
    ("shape", "has shape"),
    ("type", "model_type 't5'"),
    ("empty", "prompt is empty"),
    ("too-long", "exceeds the model's context n_positions=64"),
    ("backend", "unknown backend 'fpga9'; choose one of: torch"),
    ("bad-ids", "--prompt-ids must be comma-separated integers"),
    ("out-of-vocab", "outside the vocabulary"),
    ("no-prompt", "one of the arguments --prompt --prompt-ids is required"),
]
# the real entry point, in its own process, for a few cases; the rest run in-process through
# the same `main`, which is what the entry point calls
IN_SUBPROCESS = {"truncated", "backend", "no-prompt"}


def _bad_input_args(case, tmp_path, tiny_checkpoint) -> list[str]:
    model = tiny_checkpoint
    extra = ["--prompt", "x = 1"]
    if case == "missing":
        model = tmp_path / "nope"
    elif case in ("truncated", "shape", "type"):
        model = _corrupt(tiny_checkpoint, tmp_path, case)
    elif case == "empty":
        extra = ["--prompt", ""]
    elif case == "too-long":
        extra = ["--prompt", "x = 1", "--max-new-tokens", "64"]
    elif case == "backend":
        extra += ["--backend", "fpga9"]
    elif case == "bad-ids":
        extra = ["--prompt-ids", "1,two,3"]
    elif case == "out-of-vocab":
        extra = ["--prompt-ids", "1,99999", "--max-new-tokens", "4"]
    elif case == "no-prompt":
        extra = []
    return ["generate", "--model", str(model), *extra]


@pytest.mark.parametrize(("case", "message"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_checkpoint, capsys, case, message):
    args = _bad_input_args(case, tmp_path, tiny_checkpoint)
    if case in IN_SUBPROCESS:
        out = _run(*args)
        code, err = out.returncode, out.stderr
    else:
        try:
            code = main(args)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err


def test_data_and_eval_commands(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path / "c"), "--vocab-size", "300",
                 "--limit-files", "30", "--val-fraction", "0.3"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["vocab_size"] == 300
    assert meta["files"]["train"] + meta["files"]["val"] == 30
    assert main(["train", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "run"),
                 "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "64",
                 "--batch-size", "2", "--max-steps", "3", "--eval-interval", "3",
                 "--eval-batches", "1", "--warmup-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(tmp_path / "c"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] > 0
    assert 4.0 < result["loss"] < 7.0
    assert main(["data", "--out", str(tmp_path / "d"), "--vocab-size", "100"]) == 2
    assert "vocab_size must be in 258..65535" in capsys.readouterr().err


# -- issue 12: inputs that ended in a traceback, silent nonsense or a misleading message ------


def _bad_config(tmp_path, raw: str):
    path = tmp_path / "accel.json"
    path.write_text('{"name": "x", "clock_mhz": ' + raw + '}')
    return str(path)


HARDENING = [
    ("seed-overflow", ["--seed", "99999999999999999999999", "--temperature", "1"],
     "--seed must be in 0..2**64-1"),
    ("temperature-nan", ["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    ("temperature-inf", ["--temperature", "inf"], "--temperature must be a finite number >= 0"),
    ("not-utf8", ["--prompt", "\udcff"], "--prompt is not valid UTF-8"),
    ("config-string", ["--backend", "isa", "--config", '"300"'],
     "clock_mhz must be a number, not '300'"),
    ("config-null", ["--backend", "isa", "--config", "null"], "clock_mhz must be a number"),
    ("config-nan", ["--backend", "isa", "--config", "NaN"], "clock_mhz must be a finite number"),
    ("config-1e999", ["--backend", "isa", "--config", "1e999"],
     "clock_mhz must be a finite number"),
    ("torch-devices", ["--devices", "2"], "--devices applies to the accelerator backends"),
    ("torch-config", ["--config", "u280"], "--config applies to the accelerator backends"),
    ("model-file", ["--model", "<file>"], "is a file, not a checkpoint directory"),
    ("tokenizer-bogus", ["--tokenizer", "bogus"], "--tokenizer 'bogus' is neither auto, gpt2"),
    ("missing-value", ["--max-new-tokens"], "tandem generate: error: argument --max-new-tokens"),
    ("epsilon-x", ["--model", "<eps>"], "layer_norm_epsilon must be a number, not 'x'"),
]


@pytest.mark.parametrize(("case", "flags", "message"), HARDENING, ids=[c[0] for c in HARDENING])
def test_hardened_generate_inputs_are_one_line_exit_2(tmp_path, tiny_checkpoint, capsys, case,
                                                       flags, message):
    args = {"--model": str(tiny_checkpoint), "--prompt": "x = 1", "--max-new-tokens": "2"}
    flags = list(flags)
    if "--config" in flags and flags[flags.index("--config") + 1] not in ("u280", "tiny"):
        i = flags.index("--config") + 1
        flags[i] = _bad_config(tmp_path, flags[i])
    if "<file>" in flags:
        flags[flags.index("<file>")] = str(tiny_checkpoint / "config.json")
    if "<eps>" in flags:
        bad = tmp_path / "eps"
        shutil.copytree(tiny_checkpoint, bad)
        config = json.loads((bad / "config.json").read_text())
        config["layer_norm_epsilon"] = "x"
        (bad / "config.json").write_text(json.dumps(config))
        flags[flags.index("<eps>")] = str(bad)
    for i in range(0, len(flags) - 1, 2):
        args.pop(flags[i], None)
    argv = ["generate", *[x for kv in args.items() for x in kv], *flags]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert message in lines[0]
    assert lines[0].startswith("tandem generate: error: ")
    assert "Traceback" not in out.err
    assert out.out == ""  # nothing printed before the refusal


def test_perf_refuses_a_bad_config_value(tmp_path, capsys):
    assert main(["perf", "--config", _bad_config(tmp_path, '"300"')]) == 2
    assert "clock_mhz must be a number, not '300'" in capsys.readouterr().err


@pytest.mark.parametrize("temperature", ["1e-50", "1e-300"])
def test_tiny_temperatures_are_the_greedy_limit(tiny_checkpoint, capsys, temperature):
    """They divided the logits into infinities (NaN probabilities); now they sample as the limit
    of temperature -> 0 does: the argmax."""
    common = ["generate", "--model", str(tiny_checkpoint), "--prompt-ids", "1,2,3",
              "--max-new-tokens", "4", "--json"]
    assert main([*common, "--temperature", temperature, "--seed", "3"]) == 0
    tiny = json.loads(capsys.readouterr().out)["tokens"]
    assert main(common) == 0
    assert tiny == json.loads(capsys.readouterr().out)["tokens"]


def test_isa_refusal_prints_no_prompt(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt", "import os",
                 "--backend", "isa", "--temperature", "1", "--max-new-tokens", "1"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "use --temperature 0" in out.err
