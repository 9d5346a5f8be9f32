"""The heterogeneous pipeline: host (GPU/CPU) prefill, the KV cache in the devices' layout, FPGA
decode. Its tokens must equal an all-FPGA run's."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from host.cli import main
from host.compiler import make_plan
from host.compiler.plan import ModelShape
from host.runtime import GenerationRequest
from host.runtime.cluster_backend import ClusterBackend
from host.runtime.kv import kv_writes, read_kv, write_kv
from hw.config import PRESETS
from hw.intmath import round_up
from models.testing import hf_checkpoint

# (vocab, n_positions, n_embd, n_layer, n_head, devices): the accelerator tests' model sizes,
# with a padded head (hd 10 -> 16) and every device count
CASES = [
    pytest.param(1001, 48, 48, 2, 3, 1, id="3-heads-hd16-1dev"),
    pytest.param(503, 40, 40, 2, 4, 2, id="hd10-gapped-2dev"),
    pytest.param(97, 32, 72, 3, 12, 4, id="12-heads-hd6-4dev"),
]
SIZES = ("vocab", "n_pos", "n_embd", "n_layer", "n_head", "devices")


def _run(model, devices, prompt, n_new, **options):
    backend = ClusterBackend(model, PRESETS["tiny"].with_devices(devices),
                                 return_logits=True, **options)
    steps = list(backend.stream(GenerationRequest(list(prompt), n_new)))
    return backend, [s.token for s in steps], np.array([s.extra["logits"] for s in steps])


def _prompt(vocab, n=9):
    return [(7 * i + 3) % vocab for i in range(n)]


def test_kv_layout_round_trip_and_byte_count():
    """Random KV through `kv_writes` into every device and back through `read_kv`: the FP16 of
    what went in, heads split by device, head_dim padded (10 -> 16) with zeros."""
    shape = ModelShape(vocab_size=64, n_positions=40, n_embd=40, n_layer=2, n_head=4,
                       n_inner=160)
    plan = make_plan(shape, PRESETS["tiny"].with_devices(2))
    assert (plan.head_dim, plan.head_dim_padded, plan.slot_heads) == (10, 16, 2)
    rng = np.random.default_rng(0)
    t = 13
    kv = [(rng.standard_normal((4, t, 10)).astype(np.float32),
           rng.standard_normal((4, t, 10)).astype(np.float32)) for _ in range(2)]

    class Images:  # the part of the Device protocol write_kv uses
        def __init__(self):
            from hw.hbm import HbmImage

            self.images = [HbmImage(plan.config) for _ in range(2)]

        def image(self, d):
            return self.images[d]

    cluster = Images()
    written = write_kv(cluster, plan, kv)
    # per device: 2 layers x 2 heads x (t keys of hdp + hdp value rows of t), FP16
    assert written == [2 * 2 * (t * 16 + 16 * t) * 2] * 2
    back = read_kv(cluster.images, plan, t)
    for (k, v), (k2, v2) in zip(kv, back, strict=True):
        assert np.array_equal(k.astype(np.float16), k2)
        assert np.array_equal(v.astype(np.float16), v2)
    # the padding of a key row is zero, as the device's own STORER leaves it
    for channel, _, values in kv_writes(plan, kv, 1):
        if values.ndim == 2:  # key rows of one channel
            assert not values[:, 10:].any()
            assert 0 <= channel < plan.config.hbm_ports


def test_kv_layout_refuses_a_mismatched_cache():
    shape = ModelShape(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                       n_inner=64)
    plan = make_plan(shape, PRESETS["tiny"])
    bad = [(np.zeros((2, 3, 8)), np.zeros((2, 3, 8)))]  # head_dim 8, the model's is 16
    with pytest.raises(ValueError, match=r"expected \(2, 3, 16\)"):
        list(kv_writes(plan, bad, 0))


@pytest.mark.parametrize(SIZES, CASES)
def test_exact_prefill_is_bit_identical_to_all_fpga(tmp_path, vocab, n_pos, n_embd, n_layer,
                                                    n_head, devices):
    """With the devices' arithmetic on the host, the KV the host writes, every logit and every
    token are bit for bit those of the all-FPGA run."""
    model = hf_checkpoint(tmp_path, vocab=vocab, n_pos=n_pos, n_embd=n_embd, n_layer=n_layer,
                          n_head=n_head)
    prompt, n_new = _prompt(vocab), 6
    fpga, tokens, logits = _run(model, devices, prompt, n_new)
    hetero, tokens_x, logits_x = _run(model, devices, prompt, n_new, prefill="gpu",
                                      prefill_numerics="exact")
    assert tokens_x == tokens
    assert np.array_equal(logits_x, logits)
    plan, n = fpga.compiled.plan, len(prompt) + n_new - 1
    kv = read_kv([fpga.cluster.image(d) for d in range(devices)], plan, n)
    kv_x = read_kv([hetero.cluster.image(d) for d in range(devices)], plan, n)
    for (k, v), (k2, v2) in zip(kv, kv_x, strict=True):
        assert np.array_equal(k.view(np.uint16), k2.view(np.uint16))
        assert np.array_equal(v.view(np.uint16), v2.view(np.uint16))
    assert hetero.time_split["first_token"]["device_tokens"] == 1


@pytest.mark.parametrize(SIZES, CASES)
def test_torch_prefill_tokens_equal_all_fpga(tmp_path, vocab, n_pos, n_embd, n_layer, n_head,
                                             devices):
    """The fast path: the FP32 golden model's KV, rounded to FP16. Greedy tokens equal the
    all-FPGA run's; the logits differ by the KV's FP16 rounding only (measured)."""
    model = hf_checkpoint(tmp_path, vocab=vocab, n_pos=n_pos, n_embd=n_embd, n_layer=n_layer,
                          n_head=n_head)
    prompt, n_new = _prompt(vocab), min(12, n_pos - 9)
    _, tokens, logits = _run(model, devices, prompt, n_new)
    hetero, tokens_h, logits_h = _run(model, devices, prompt, n_new, prefill="gpu")
    diff = float(np.abs(logits_h - logits).max())
    print(f"max |logit difference| against the all-FPGA run: {diff:.4g}")
    assert tokens_h == tokens
    assert 0 < diff < 0.05 * float(np.abs(logits).max())  # the KV differs, a little
    split = hetero.time_split
    assert split["prefill"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert split["prefill"]["tokens"] == len(prompt) - 1
    hd = n_embd // n_head
    hdp = round_up(hd, PRESETS["tiny"].align)
    # each layer and head: (n-1) key rows of hdp and hdp value rows of n-1 columns, FP16
    assert split["transfer"]["bytes"] == n_layer * n_head * (len(prompt) - 1) * 2 * hdp * 2
    assert split["transfer"]["bytes_per_device"] == [split["transfer"]["bytes"] // devices] \
        * devices


def test_one_token_prompt_needs_no_transfer(tmp_path):
    model = hf_checkpoint(tmp_path, vocab=211, n_pos=32, n_embd=48, n_layer=2, n_head=3)
    _, tokens, _ = _run(model, 1, [17], 5)
    backend, tokens_h, _ = _run(model, 1, [17], 5, prefill="gpu")
    assert tokens_h == tokens
    assert backend.time_split["transfer"]["bytes"] == 0
    assert backend.time_split["prefill"]["tokens"] == 0


def test_a_second_request_overwrites_the_first_requests_cache(tmp_path):
    """A backend serves requests one after another: each request's host KV replaces what the
    previous one left in HBM."""
    model = hf_checkpoint(tmp_path, vocab=211, n_pos=32, n_embd=48, n_layer=2, n_head=3)
    backend = ClusterBackend(model, PRESETS["tiny"], prefill="gpu")
    first, second = [5, 9, 11, 3, 7, 2], [40, 41, 42, 43]
    list(backend.stream(GenerationRequest(first, 4)))
    tokens = [s.token for s in backend.stream(GenerationRequest(second, 6))]
    assert tokens == _run(model, 1, second, 6)[1]


def test_generate_cli_reports_the_time_split(tmp_path, capsys):
    model = hf_checkpoint(tmp_path, vocab=211, n_pos=32, n_embd=48, n_layer=2, n_head=3)
    del model
    base = ["generate", "--model", str(tmp_path), "--prompt-ids", "4,8,15,16,23,42",
            "--max-new-tokens", "5", "--backend", "isa", "--devices", "3", "--json"]
    assert main(base) == 0
    fpga = json.loads(capsys.readouterr().out)
    assert main([*base, "--prefill", "gpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tokens"] == fpga["tokens"]
    assert record["prefill"] == "gpu"
    assert fpga["prefill"] == "fpga"
    split = record["time_split"]
    assert split["prefill"]["device"] == record["prefill_device"]
    assert split["prefill"]["ms"] > 0
    assert split["transfer"]["bytes"] > 0
    assert split["transfer"]["ms"] > 0
    steps = record["steps"]
    assert split["first_token"]["ms"] == pytest.approx(steps[0]["ms"], abs=1e-6)
    assert split["decode"]["tokens"] == 4
    assert split["decode"]["ms_per_token"] == pytest.approx(
        sum(s["ms"] for s in steps[1:]) / 4, abs=1e-6)
    for s in steps:  # device time is cycles at the tiny config's 200 MHz
        assert s["ms"] == pytest.approx(s["cycles"] / 200e3, rel=1e-6)
    # the devices process one prompt token instead of six: the first token comes sooner
    assert split["first_token"]["ms"] < fpga["time_split"]["first_token"]["ms"]
    assert fpga["time_split"]["first_token"]["device_tokens"] == 6

    assert main([*base[:-1], "--prefill", "gpu"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\[time split: host prefill 5 tokens on (cpu|cuda) \(torch\) [\d.]+ ms; "
                     r"KV transfer [\d.]+ KiB: .* decode [\d.]+ ms/token at 200 MHz", text)


@pytest.mark.slow  # three u280 compiles and simulations: ~30 s on 2 busy cores
def test_demo_command_on_a_two_fpga_u280_appliance(tmp_path, tiny_corpus, capsys):
    """`make demo`'s command line on a model of the default model's form (4 heads, its own
    tokenizer): the continuation, the per-token latency at the clock and the time split."""
    import shutil

    hf_checkpoint(tmp_path, vocab=512, n_pos=64, n_embd=64, n_layer=2, n_head=4)
    shutil.copyfile(tiny_corpus / "tokenizer.json", tmp_path / "tokenizer.json")
    argv = ["generate", "--model", str(tmp_path), "--prompt", "def fibonacci(n):",
            "--max-new-tokens", "6", "--backend", "isa", "--config", "u280", "--devices", "2"]
    assert main([*argv, "--prefill", "gpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("def fibonacci(n):")
    assert re.search(r"at 300.0 MHz: first token [\d.]+ ms, then [\d.]+ ms/token", lines[-2])
    assert re.search(r"^\[time split: host prefill \d+ tokens on (cpu|cuda) .* first token on "
                     r"the devices \(1 prompt token\) .* decode [\d.]+ ms/token at 300 MHz",
                     lines[-1])
    assert main([*argv, "--json", "--prefill", "gpu"]) == 0
    hetero = json.loads(capsys.readouterr().out)
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == hetero["tokens"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prefill", "gpu"], "apply to the accelerator backends"),
        (["--backend", "isa", "--prefill-numerics", "exact"], "add --prefill gpu"),
        (["--backend", "isa", "--prefill", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_prefill_bad_input_is_one_line(tiny_checkpoint, capsys, extra, message):
    try:
        code = main(["generate", "--model", str(tiny_checkpoint), "--prompt", "x",
                     "--max-new-tokens", "2", *extra])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.search(message, err[0])


@pytest.mark.gpu
def test_prefill_runs_on_cuda_and_tokens_equal(tmp_path):
    model = hf_checkpoint(tmp_path, vocab=1001, n_pos=48, n_embd=48, n_layer=2, n_head=3)
    prompt = _prompt(1001, 20)
    _, tokens, _ = _run(model, 1, prompt, 10)
    backend, tokens_h, _ = _run(model, 1, prompt, 10, prefill="gpu")
    assert backend.time_split["prefill"]["device"] == "cuda"
    assert tokens_h == tokens
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays put


def test_default_model_demo_tokens_equal_all_fpga():
    """`make demo`'s job on the shipped model: CPU/GPU prefill with the fast torch numerics
    gives the all-FPGA run's tokens on two u280 devices."""
    import models

    model = models.load_model(models.default_model_dir())
    prompt = models.load_tokenizer(models.default_model_dir()).encode("def fibonacci(n):")
    runs = []
    for options in ({}, {"prefill": "gpu"}):
        backend = ClusterBackend(model, PRESETS["u280"].with_devices(2), **options)
        runs.append([s.token for s in backend.stream(GenerationRequest(prompt, 24))])
    assert runs[1] == runs[0]
