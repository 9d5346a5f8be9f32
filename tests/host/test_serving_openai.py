"""OpenAI compatibility of `tandem serve`, on loopback: a list of prompts gets one choice per
prompt (queued together), an unknown model gets 404 `model_not_found`, and the official
`openai` client works unchanged. Every text is checked against the golden model's greedy
`generate()`."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch

import models
from host.serving import BackgroundServer, ServeConfig, load_service

PROMPTS = ["def parse(", "import os\n", "class Node:"]
MAX_TOKENS = 5


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def golden(tiny_checkpoint):
    """prompt -> (greedy text, tokens) from the golden model, on the torch backend's device."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = models.load_model(tiny_checkpoint).to(device)
    tok = models.load_tokenizer(tiny_checkpoint)

    def answer(prompt: str | list[int]) -> tuple[str, list[int]]:
        ids = tok.encode(prompt) if isinstance(prompt, str) else prompt
        tokens = model.generate(ids, MAX_TOKENS, temperature=0.0)
        return tok.decode(tokens), tokens

    return answer


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    config = ServeConfig(port=0, shutdown_timeout_s=2, queue_size=4, model_name="tiny")
    service = load_service(config, tiny_checkpoint)
    with BackgroundServer(service) as running:
        yield running


def call(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read().decode()
        if resp.getheader("content-type", "").startswith("text/event-stream"):
            return resp.status, [json.loads(b.removeprefix("data: "))
                                 if b != "data: [DONE]" else "[DONE]"
                                 for b in payload.split("\n\n") if b]
        return resp.status, json.loads(payload)
    finally:
        conn.close()


def test_a_list_of_prompts_gets_one_choice_per_prompt(server, golden):
    engine = server.service.engine
    before = engine.status()["accepted"]
    status, body = call(server.url, {"prompt": PROMPTS, "max_tokens": MAX_TOKENS})
    assert status == 200, body
    assert engine.status()["accepted"] - before == len(PROMPTS)  # one job each, one queue
    assert [c["index"] for c in body["choices"]] == list(range(len(PROMPTS)))
    for prompt, choice in zip(PROMPTS, body["choices"], strict=True):
        text, tokens = golden(prompt)
        assert choice["text"] == text
        assert choice["tandem"]["tokens"] == tokens
        assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == MAX_TOKENS * len(PROMPTS)
    ids = [[5, 6, 7], [9]]
    status, body = call(server.url, {"prompt": ids, "max_tokens": MAX_TOKENS})
    assert status == 200, body
    assert [c["text"] for c in body["choices"]] == [golden(p)[0] for p in ids]
    assert body["usage"]["prompt_tokens"] == 4
    status, body = call(server.url, {"prompt": PROMPTS[:1], "max_tokens": MAX_TOKENS})
    assert status == 200, body
    assert [c["text"] for c in body["choices"]] == [golden(PROMPTS[0])[0]]


def test_a_streamed_list_of_prompts_streams_every_choice_by_index(server, golden):
    status, events = call(server.url, {"prompt": PROMPTS[:2], "max_tokens": MAX_TOKENS,
                                       "stream": True,
                                       "stream_options": {"include_usage": True}})
    assert status == 200, events
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert len({e["id"] for e in events[:-1]}) == 1
    for index, prompt in enumerate(PROMPTS[:2]):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == golden(prompt)[0]
        assert mine[-1]["finish_reason"] == "length"
    (usage,) = [e["usage"] for e in events[:-1] if not e["choices"]]
    assert usage["completion_tokens"] == 2 * MAX_TOKENS


def test_more_prompts_than_the_queue_holds_are_refused_whole(server):
    engine = server.service.engine
    before = engine.status()["accepted"]
    status, body = call(server.url, {"prompt": ["a"] * 5, "max_tokens": 1})
    assert status == 400, body
    assert body["error"]["code"] == "too_many_prompts"
    status, body = call(server.url, {"prompt": ["a", "x" * 10_000], "max_tokens": 1})
    assert status == 400, body
    assert body["error"]["code"] == "context_length_exceeded"
    assert engine.status()["accepted"] == before  # nothing of either was queued


def test_an_unknown_model_is_404_model_not_found(server):
    status, body = call(server.url, {"prompt": "x", "model": "gpt-4"})
    assert status == 404, body
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model"
    assert body["error"]["type"] == "invalid_request_error"
    assert "'tiny'" in body["error"]["message"]


def test_the_official_openai_client_works_unchanged(server, golden):
    openai = pytest.importorskip("openai", reason="the openai client is in the test extra")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                           timeout=30)
    try:
        (model,) = client.models.list().data
        assert model.id == "tiny"
        one = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=MAX_TOKENS,
                                        temperature=0)
        assert one.choices[0].text == golden(PROMPTS[0])[0]
        assert one.usage.completion_tokens == MAX_TOKENS
        many = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=MAX_TOKENS,
                                         temperature=0)
        assert [c.index for c in many.choices] == [0, 1, 2]
        assert [c.text for c in many.choices] == [golden(p)[0] for p in PROMPTS]
        streamed = client.completions.create(model="tiny", prompt=PROMPTS[1],
                                             max_tokens=MAX_TOKENS, temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in streamed if c.choices) == golden(PROMPTS[1])[0]
        with pytest.raises(openai.NotFoundError) as info:
            client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
        assert info.value.status_code == 404
        assert info.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="tiny", prompt="x", temperature=1e-300)
        assert info.value.status_code == 400
    finally:
        client.close()
