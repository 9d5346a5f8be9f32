"""Fill-in-the-middle at inference: `tandem generate --suffix` on every backend (torch and isa
here; rtl runs the same token order) and `suffix` on the server's /v1/completions."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from host.cli import main as tandem
from models import load_model, load_tokenizer
from models.data.fim import ensure_fim, infill_prompt_ids

PREFIX, SUFFIX = "def add(a, b):\n    ", "\n    return c\n"


@pytest.fixture(scope="module")
def fim_checkpoint(tmp_path_factory, tiny_checkpoint):
    """The tiny checkpoint made FIM-capable as a loader would (tokenizer extended, embedding
    resized, new rows the mean), then with an <eom> row that the greedy infill's hidden states
    before its first two tokens ignore (orthogonal) and the one before the third prefers
    (twice the largest logit): the greedy middle is two tokens, then <eom>."""
    out = tmp_path_factory.mktemp("fim")
    shutil.copytree(tiny_checkpoint, out, dirs_exist_ok=True)
    model = load_model(out).eval()
    tok = ensure_fim(model, load_tokenizer(out))
    ids = infill_prompt_ids(tok, PREFIX, SUFFIX)
    path = _greedy(model, ids, 2, None)
    with torch.no_grad():
        h = model.transformer(torch.tensor([ids + path]))[0][0, len(ids) - 1:]  # (3, C)
        q, _ = torch.linalg.qr(h[:2].T)  # (C, 2): the first two states' span
        u = h[2] - q @ (q.T @ h[2])  # (C,) the third state, orthogonal to them
        top = model.lm_head(h[2]).abs().max()
        model.transformer.wte.weight[tok.fim_tokens().end] = 2 * top * u / (u @ u)
    model.save_pretrained(out)
    tok.save(out)
    return out


def _greedy(model, ids, n, stop) -> list[int]:
    """Greedy tokens after `ids`, up to n, ending before `stop`: the model run directly."""
    ids, new = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids]))[0][0, -1].argmax())
            if nxt == stop:
                break
            new.append(nxt)
            ids.append(nxt)
    return new


def _generate(model, backend, capsys, *extra) -> dict:
    code = tandem(["generate", "--model", str(model), "--prompt", PREFIX,
                   "--suffix", SUFFIX, "--max-new-tokens", "6", "--backend",
                   backend, "--json", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_infill_tokens_agree_on_torch_and_isa(fim_checkpoint, capsys):
    tok = load_tokenizer(fim_checkpoint)
    torch_run = _generate(fim_checkpoint, "torch", capsys)
    isa_run = _generate(fim_checkpoint, "isa", capsys)
    # the prompt is the PSM order, ending at <mid>
    want = infill_prompt_ids(tok, PREFIX, SUFFIX)
    assert torch_run["prompt_tokens"] == isa_run["prompt_tokens"] == want
    assert want[-1] == tok.fim_tokens().middle
    assert torch_run["tokens"] == isa_run["tokens"]
    assert torch_run["end_of_middle"] == isa_run["end_of_middle"]
    # the torch path against the model itself, greedy, stopping at <eom>
    greedy = _greedy(load_model(fim_checkpoint).eval(), want, 6, tok.fim_tokens().end)
    assert torch_run["tokens"] == greedy
    assert torch_run["end_of_middle"]  # stopped at <eom>, which is not among the tokens
    assert len(greedy) == 2  # as the fixture's <eom> row was built
    assert torch_run["text"] == tok.decode(greedy)


def test_suffix_without_fim_sentinels_is_one_line_exit_2(tiny_checkpoint, capsys):
    code = tandem(["generate", "--model", str(tiny_checkpoint), "--prompt", "x = ",
                   "--suffix", "\n"])
    err = capsys.readouterr().err
    assert code == 2
    assert "has no FIM sentinels" in err
    assert err.count("\n") == 1


def test_serve_completes_the_middle_for_a_suffix_and_refuses_a_model_without_fim(
        fim_checkpoint, tiny_checkpoint):
    from .serving_helpers import call, running

    tok = load_tokenizer(fim_checkpoint)
    want = infill_prompt_ids(tok, PREFIX, SUFFIX)
    greedy = _greedy(load_model(fim_checkpoint).eval(), want, 6, tok.fim_tokens().end)
    body = {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 6}
    with running(fim_checkpoint) as (server, _):
        reply = call(server.url, "/v1/completions", body)
        plain = call(server.url, "/v1/completions", {"prompt": PREFIX, "max_tokens": 2})
    assert reply.status == 200, reply.body
    choice = reply.body["choices"][0]
    assert choice["text"] == tok.decode(greedy)  # the middle, without <eom>
    assert choice["finish_reason"] == "stop"
    assert reply.body["usage"]["prompt_tokens"] == len(want)
    assert plain.status == 200  # without a suffix it is a plain completion
    assert plain.body["usage"]["prompt_tokens"] == len(tok.encode(PREFIX))
    with running(tiny_checkpoint) as (server, _):
        refused = call(server.url, "/v1/completions", body)
    assert refused.status == 400
    error = refused.body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "suffix"
    assert "no FIM sentinels" in error["message"]
