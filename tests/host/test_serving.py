"""`tandem serve` on loopback: the real uvicorn server, real HTTP, a tiny real checkpoint.

Every completion is checked against the golden model's own `generate()` run in the test, and
every error against OpenAI's shape. The load test sends bounded concurrent traffic through a
queue small enough to overflow and checks that nothing is lost or answered wrongly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, pre_tokenizers, trainers
from tokenizers import models as tok_models

import models
from host.cli import main as cli_main
from host.runtime import BACKENDS, TorchBackend

from .serving_helpers import HTTP_TIMEOUT_S, Reply, call, connect, running

CORPUS = ["def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
          "import os\nimport sys\nfor line in sys.stdin:\n    print(line.strip())\n",
          "class Point:\n    def __init__(self, x, y):\n        self.x = x\n"]
N_POSITIONS = 64


# -- a tiny checkpoint and its golden answers ---------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with its own byte-level BPE, saved as `tandem serve` loads it.

    Untied, scaled-up embeddings and head give peaked next-token distributions, so greedy and
    sampled continuations differ from prompt to prompt (a mixed-up answer shows)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-code"
    hf = HFTokenizer(tok_models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    torch.manual_seed(0)
    model = models.GPT2LMHead(models.GPT2Config(
        vocab_size=hf.get_vocab_size(), n_positions=N_POSITIONS, n_embd=32, n_layer=2,
        n_head=2, tie_word_embeddings=False))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(30)
        model.lm_head.weight.mul_(4)
    model.save_pretrained(path)
    hf.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny matrices gain nothing from threads, and on a busy 2-core machine their
    synchronisation makes each token ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Golden:
    model: Any
    tokenizer: models.Tokenizer
    cache: dict[str, tuple[str, list[int], str]] = field(default_factory=dict)

    def ids(self, prompt: str | list[int]) -> list[int]:
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    def answer(self, body: dict[str, Any]) -> tuple[str, list[int], str]:
        """(text, tokens, finish_reason) that `body` must get, from `generate()` itself."""
        key = json.dumps([body.get(k) for k in ("prompt", "max_tokens", "temperature",
                                                "top_k", "seed", "stop")])
        if key not in self.cache:
            self.cache[key] = self._answer(body)
        return self.cache[key]

    def _answer(self, body: dict[str, Any]) -> tuple[str, list[int], str]:
        tokens = self.model.generate(self.ids(body["prompt"]), body.get("max_tokens", 16),
                                     temperature=body.get("temperature", 0.0),
                                     top_k=body.get("top_k"), seed=body.get("seed", 0))
        text = self.tokenizer.decode(tokens)
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[: min(hits)], tokens, "stop"
        return text, tokens, "length"


@pytest.fixture(scope="module")
def golden(checkpoint) -> Golden:
    """The golden model on the device the torch backend picks, so both run the same kernels."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Golden(models.load_model(checkpoint).to(device), models.load_tokenizer(checkpoint))


class Paced:
    """The torch backend behind a gate and a per-token delay, so a test can hold the worker.

    It is registered like any backend (BACKENDS["paced"]): the server serves it unchanged."""

    name = "paced"

    def __init__(self, model, delay_s: float = 0.0) -> None:
        self.inner = TorchBackend(model)
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.steps = 0  # tokens produced, over all requests

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "backend": self.name}

    def stream(self, request):
        for step in self.inner.stream(request):
            if not self.gate.wait(HTTP_TIMEOUT_S):
                raise TimeoutError("the test never opened the gate")
            time.sleep(self.delay_s)
            self.steps += 1
            yield step


@pytest.fixture
def paced(monkeypatch):
    """Registers the `paced` backend; the test sets `.delay_s` through the returned holder."""
    holder: dict[str, float] = {"delay_s": 0.0}
    monkeypatch.setitem(BACKENDS, "paced", lambda model, **_: Paced(model, holder["delay_s"]))
    return holder


def complete(url: str, body: dict[str, Any]) -> Reply:
    return call(url, "/v1/completions", body)


def completion_of(reply: Reply, stream: bool) -> tuple[str, list[int], str, dict[str, Any]]:
    """(text, tokens, finish_reason, usage) of a 200 answer, checking its OpenAI shape."""
    assert reply.status == 200, reply.body
    if not stream:
        body = reply.body
        assert body["object"] == "text_completion"
        assert body["id"].startswith("cmpl-")
        assert isinstance(body["created"], int)
        assert body["model"] == "tiny-code"
        (choice,) = body["choices"]
        assert choice["index"] == 0
        assert choice["logprobs"] is None
        steps = choice["tandem"]["steps"]
        assert [s["token"] for s in steps] == choice["tandem"]["tokens"]
        assert all(s["ms"] >= 0 for s in steps)
        return choice["text"], choice["tandem"]["tokens"], choice["finish_reason"], body["usage"]
    events = reply.body
    assert events[-1] == "[DONE]"
    assert "[DONE]" not in events[:-1]
    chunks = [e for e in events[:-1] if e["choices"]]
    usage = [e["usage"] for e in events[:-1] if not e["choices"]]
    assert len({c["id"] for c in events[:-1]}) == 1
    *per_token, last = chunks
    assert all(c["choices"][0]["finish_reason"] is None for c in per_token)
    assert last["choices"][0]["finish_reason"] in ("length", "stop")
    tokens = [c["choices"][0]["tandem"]["token"] for c in per_token]
    assert last["choices"][0]["tandem"]["tokens"] == tokens  # one chunk per token
    text = "".join(c["choices"][0]["text"] for c in chunks)
    return text, tokens, last["choices"][0]["finish_reason"], (usage or [None])[0]


def assert_matches_golden(golden: Golden, body: dict[str, Any], reply: Reply) -> None:
    text, tokens, reason, usage = completion_of(reply, body.get("stream", False))
    want_text, want_tokens, want_reason = golden.answer(body)
    assert (text, reason) == (want_text, want_reason), body
    if reason == "length":
        assert tokens == want_tokens
    else:  # a stop string ends generation early: a prefix of the golden tokens
        assert 0 < len(tokens) <= len(want_tokens)
        assert tokens == want_tokens[: len(tokens)]
    if usage is not None:
        n_prompt = len(golden.ids(body["prompt"]))
        assert usage == {"prompt_tokens": n_prompt, "completion_tokens": len(tokens),
                         "total_tokens": n_prompt + len(tokens)}


def assert_error(reply: Reply, status: int, param: str | None = None,
                 fragment: str = "") -> dict[str, Any]:
    assert reply.status == status, reply.body
    error = reply.body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]
    assert "\n" not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def health(url: str) -> dict[str, Any]:
    reply = call(url, "/health", method="GET")
    return reply.body


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    until = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < until, "condition not reached in time"
        time.sleep(0.01)


# -- the API ------------------------------------------------------------------------------------

REQUESTS = [
    {"prompt": "def fibonacci(n):", "max_tokens": 12},
    {"prompt": "import os\n", "max_tokens": 20, "temperature": 0.9, "seed": 7},
    {"prompt": "class Point:", "max_tokens": 9, "temperature": 1.3, "top_k": 5, "seed": 123},
    {"prompt": [5, 77, 120, 3], "max_tokens": 15, "temperature": 0.7, "seed": 1},
    {"prompt": "x", "max_tokens": N_POSITIONS - 1},  # fills the context exactly
]


def test_health_and_models_describe_the_served_model(checkpoint):
    with running(checkpoint, queue_size=3) as (server, _):
        h = call(server.url, "/health", method="GET")
        assert h.status == 200
        assert h.body["status"] == "ok"
        assert h.body["model"] == "tiny-code"
        assert h.body["backend"] == "torch"
        assert h.body["n_positions"] == N_POSITIONS
        assert h.body["queue"]["capacity"] == 3
        assert h.body["queue"]["waiting"] == 0
        m = call(server.url, "/v1/models", method="GET")
        assert m.body["object"] == "list"
        assert [d["id"] for d in m.body["data"]] == ["tiny-code"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_completions_equal_golden_generate(checkpoint, golden, stream):
    with running(checkpoint) as (server, _):
        for req in REQUESTS:
            body = {**req, "model": "tiny-code", "stream": stream}
            if stream:
                body["stream_options"] = {"include_usage": True}
            reply = complete(server.url, body)
            assert_matches_golden(golden, body, reply)
            if stream:
                assert reply.headers["content-type"].startswith("text/event-stream")


def test_same_text_as_tandem_generate(checkpoint, capsys):
    """The server and the CLI give the same text for the same options."""
    argv = ["generate", "--model", str(checkpoint), "--prompt", "for line in", "--json",
            "--max-new-tokens", "14", "--temperature", "0.8", "--top-k", "20", "--seed", "5"]
    assert cli_main(argv) == 0
    cli = json.loads(capsys.readouterr().out)
    with running(checkpoint) as (server, _):
        reply = complete(server.url, {"prompt": "for line in", "max_tokens": 14,
                                      "temperature": 0.8, "top_k": 20, "seed": 5})
    text, tokens, _, _ = completion_of(reply, stream=False)
    assert (text, tokens) == (cli["text"], cli["tokens"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_stop_strings_cut_the_text(checkpoint, golden, stream):
    prompt = {"prompt": "def fibonacci(n):", "max_tokens": 30, "temperature": 1.0, "seed": 3}
    full, _, _ = golden.answer(prompt)
    stop = full[10:12]  # a string the model is known to produce
    assert stop
    assert stop in full
    with running(checkpoint) as (server, _):
        body = {**prompt, "stop": [stop, "never-produced"], "stream": stream}
        reply = complete(server.url, body)
    assert_matches_golden(golden, body, reply)
    text, tokens, reason, _ = completion_of(reply, stream)
    assert reason == "stop"
    assert text == full[: full.find(stop)]
    assert len(tokens) < 30


def test_malformed_requests_get_a_clear_4xx(checkpoint):
    with running(checkpoint, max_body_bytes=2000) as (server, service):
        url = server.url
        assert_error(call(url, "/v1/completions", raw=b"{bad json"), 400, None, "not valid JSON")
        assert_error(call(url, "/v1/completions", raw=b""), 400, None, "body is empty")
        assert_error(call(url, "/v1/completions", raw=b'{"prompt": "x", "temperature": NaN}'),
                     400, None, "NaN is not a JSON number")
        assert_error(call(url, "/v1/completions", raw=b"[1, 2]"), 400, None, "JSON object")
        assert_error(complete(url, {"max_tokens": 4}), 400, "prompt", "'prompt' is required")
        assert_error(complete(url, {"prompt": ""}), 400, "prompt", "'prompt' is empty")
        assert_error(complete(url, {"prompt": []}), 400, "prompt", "'prompt' is empty")
        assert_error(complete(url, {"prompt": [1, 10_000]}), 400, "prompt",
                     "token id 10000 is outside the vocabulary (0..")
        e = assert_error(complete(url, {"prompt": [1, 2, 3], "max_tokens": N_POSITIONS}), 400,
                         "max_tokens", f"exceeds the model's context of {N_POSITIONS} tokens")
        assert f"lower max_tokens to {N_POSITIONS - 3}" in e["message"]
        assert e["code"] == "context_length_exceeded"
        e = assert_error(complete(url, {"prompt": "x", "model": "gpt-4"}), 404, "model",
                         "model 'gpt-4' is not served here")
        assert e["code"] == "model_not_found"
        assert_error(complete(url, {"prompt": "x", "max_tokens": 2.5}), 400, "max_tokens",
                     "valid integer")
        assert_error(complete(url, {"prompt": "x", "top_p": 0.5}), 400, "top_p", "use top_k")
        assert_error(complete(url, {"prompt": "x" * 3000}), 413, None, "exceeds 2000 bytes")
        assert_error(call(url, "/v1/chat/completions", {"prompt": "x"}), 404, None,
                     "no route for POST /v1/chat/completions")
        assert_error(call(url, "/v1/completions", method="GET"), 405)
        assert service.engine.status()["accepted"] == 0  # none of them reached the backend
        assert complete(url, {"prompt": "x", "max_tokens": 2}).status == 200  # still serving


# -- the queue, timeouts, cancellation, shutdown ------------------------------------------------

def _in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def test_full_queue_answers_429_with_retry_after(checkpoint, golden, paced):
    with running(checkpoint, backend="paced", queue_size=2) as (server, service):
        backend = service.engine.backend
        backend.gate.clear()  # the worker will hold its first request
        bodies = [{"prompt": f"import os {i}", "max_tokens": 4, "temperature": 0.5, "seed": i}
                  for i in range(3)]
        first = _in_thread(complete, server.url, bodies[0])
        wait_until(lambda: health(server.url)["queue"]["running"] == 1)
        queued = [_in_thread(complete, server.url, b) for b in bodies[1:]]
        wait_until(lambda: health(server.url)["queue"]["waiting"] == 2)
        for stream in (False, True):
            reply = complete(server.url, {"prompt": "one too many", "stream": stream})
            error = assert_error(reply, 429, None, "the queue is full (2 requests waiting)")
            assert error["type"] == "rate_limit_error"
            assert error["code"] == "queue_full"
            assert int(reply.headers["retry-after"]) >= 1
        backend.gate.set()
        for (thread, out), body in zip([first, *queued], bodies, strict=True):
            thread.join(HTTP_TIMEOUT_S)
            assert_matches_golden(golden, body, out[0])
        status = health(server.url)["queue"]
        assert (status["accepted"], status["rejected"], status["completed"]) == (3, 2, 3)


def test_timeouts_answer_503_in_queue_and_504_while_generating(checkpoint, paced):
    paced["delay_s"] = 0.1
    with running(checkpoint, backend="paced", request_timeout_s=0.6) as (server, service):
        backend = service.engine.backend
        backend.gate.clear()  # the first request hangs in its first token
        slow = _in_thread(complete, server.url, {"prompt": "def", "max_tokens": 30})
        wait_until(lambda: health(server.url)["queue"]["running"] == 1)
        waiting = complete(server.url, {"prompt": "import", "max_tokens": 2})
        error = assert_error(waiting, 503, None, "waiting 0.6 s in the queue")
        assert error["code"] == "queue_timeout"
        assert "retry-after" in waiting.headers
        slow[0].join(HTTP_TIMEOUT_S)
        error = assert_error(slow[1][0], 504, None, "timed out after 0 of 30 tokens")
        assert error["code"] == "generation_timeout"
        assert "--request-timeout-s" in error["message"]
        backend.gate.set()
        wait_until(lambda: health(server.url)["queue"]["running"] == 0)
        assert backend.steps <= 1  # the abandoned request stopped at its next token
        # Tokens flowing, then the deadline: the status is already 200, so the timeout
        # arrives as an error event, and generation stops there.
        events = complete(server.url, {"prompt": "def", "max_tokens": 30, "stream": True}).body
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "generation_timeout"
        assert 0 < len(events) - 2 < 30
        wait_until(lambda: health(server.url)["queue"]["running"] == 0)
        assert backend.steps < 30
        status = health(server.url)["queue"]
        assert status["completed"] == 0
        assert status["timed_out"] + status["cancelled"] == 3


def test_client_disconnect_cancels_running_and_queued_work(checkpoint, paced):
    paced["delay_s"] = 0.05
    with running(checkpoint, backend="paced") as (server, service):
        backend = service.engine.backend
        # A streaming client reads two chunks, then hangs up.
        conn = connect(server.url)
        conn.request("POST", "/v1/completions", json.dumps(
            {"prompt": "def", "max_tokens": 60, "stream": True}).encode(),
            {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")
        # A non-streaming client queued behind it hangs up before it runs.
        sock = socket.create_connection((urlsplit(server.url).hostname,
                                         urlsplit(server.url).port))
        body = json.dumps({"prompt": "import", "max_tokens": 5}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: health(server.url)["queue"]["waiting"] == 1)
        sock.close()
        wait_until(lambda: health(server.url)["queue"]["waiting"] == 0)
        resp.close()
        conn.close()
        wait_until(lambda: health(server.url)["queue"]["running"] == 0)
        status = health(server.url)["queue"]
        assert status["cancelled"] == 2
        assert status["completed"] == 0
        assert backend.steps < 60  # the stream stopped generating when its client left


def test_shutdown_finishes_requests_in_flight(checkpoint, golden, paced):
    paced["delay_s"] = 0.03
    body = {"prompt": "def fibonacci(n):", "max_tokens": 20}
    with running(checkpoint, backend="paced") as (server, _):
        thread, out = _in_thread(complete, server.url, body)
        wait_until(lambda: health(server.url)["queue"]["running"] == 1)
        server.stop()  # graceful: waits for the request
        thread.join(HTTP_TIMEOUT_S)
        assert_matches_golden(golden, body, out[0])
        with pytest.raises(ConnectionRefusedError):
            complete(server.url, body)  # no longer listening


# -- the load test ------------------------------------------------------------------------------

CLIENTS = 24
REQUESTS_PER_CLIENT = 3


@pytest.mark.timeout(150)
def test_load_nothing_lost_nothing_wrong(checkpoint, golden):
    """24 concurrent clients x 3 requests through a queue of 6: clients retry on 429 and
    every request ends with exactly one right answer; the server's counters agree."""
    rng = random.Random(0)
    prompts = ["def fibonacci(n):", "import os\n", "class Point:", "for line in", "    return",
               [7, 8, 9], [100, 200, 50, 1]]
    bodies = []
    for i in range(CLIENTS * REQUESTS_PER_CLIENT):
        body = {"prompt": rng.choice(prompts), "max_tokens": rng.randrange(4, 17),
                "stream": i % 2 == 1}
        if i % 3:
            body.update(temperature=rng.choice([0.6, 1.0, 1.4]), seed=i,
                        top_k=rng.choice([None, 3, 50]))
        if i % 7 == 0:
            body["stop"] = [rng.choice(["e", "(", "\n", "on"])]
        bodies.append(body)
    answers = [golden.answer(b) for b in bodies]  # before the load: the golden run is alone
    assert len({a[0] for a in answers}) > 0.75 * len(bodies)  # a swapped answer would show

    deadline = time.monotonic() + 120
    rejected = [0] * CLIENTS

    def client(c: int) -> list[Reply]:
        replies = []
        for body in bodies[c::CLIENTS]:
            while True:
                reply = complete(server.url, body)
                if reply.status != 429:
                    replies.append(reply)
                    break
                rejected[c] += 1
                assert int(reply.headers["retry-after"]) >= 1
                assert time.monotonic() < deadline, "the server never took the request"
                time.sleep(random.uniform(0.01, 0.05))  # a test client does not wait seconds
        return replies

    started = time.monotonic()
    with running(checkpoint, queue_size=6, request_timeout_s=60) as (server, _):
        with ThreadPoolExecutor(CLIENTS) as pool:
            per_client = list(pool.map(client, range(CLIENTS)))
        status = health(server.url)["queue"]
    elapsed = time.monotonic() - started
    for c, replies in enumerate(per_client):
        assert len(replies) == REQUESTS_PER_CLIENT
        for body, reply in zip(bodies[c::CLIENTS], replies, strict=True):
            assert_matches_golden(golden, body, reply)
    total = CLIENTS * REQUESTS_PER_CLIENT
    assert status["completed"] == status["accepted"] == total
    assert status["rejected"] == sum(rejected)
    assert status["failed"] == status["cancelled"] == status["timed_out"] == 0
    assert status["waiting"] == status["running"] == 0
    print(f"load: {total} requests from {CLIENTS} clients in {elapsed:.1f} s, "
          f"{sum(rejected)} answered 429 and retried")


# -- the command line ---------------------------------------------------------------------------

def test_tandem_serve_command_serves_and_stops_on_sigint(checkpoint, golden):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "host.cli", "serve", "--model", str(checkpoint), "--port", "0",
         "--queue-size", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).resolve().parents[2],
        # a shell's background job inherits SIGINT ignored, and so would the server (it would
        # then shut down on SIGINT but exit 0): give it the disposition a terminal gives
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert "tandem serve: tiny-code (backend torch" in line, proc.stderr.read()
        url = line.split(" at ")[1].strip().removesuffix("/v1/completions")
        body = {"prompt": "class Point:", "max_tokens": 10, "temperature": 1.0, "seed": 11}
        assert_matches_golden(golden, body, complete(url, body))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        assert "Application shutdown complete" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_tandem_serve_busy_port_is_one_line(checkpoint, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code = cli_main(["serve", "--model", str(checkpoint), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"tandem serve: error: cannot listen on 127.0.0.1:{port}")
    assert "pick another --port" in err
    assert err.count("\n") == 1


def test_the_accelerator_backend_serves_unchanged(checkpoint, golden):
    """`--backend isa` behind the same server: greedy text equals the golden model's; a
    sampling request is refused up front, since the devices decode greedily."""
    with running(checkpoint, backend="isa") as (server, _):
        body = {"prompt": "def f(x):", "max_tokens": 5}
        reply = call(server.url, "/v1/completions", body)
        assert reply.status == 200
        text, tokens, _ = golden._answer(body)
        choice = reply.body["choices"][0]
        assert choice["text"] == text
        assert choice["tandem"]["tokens"] == tokens
        assert choice["tandem"]["backend"] == "isa"
        assert all(step["cycles"] > 0 for step in choice["tandem"]["steps"])
        refused = call(server.url, "/v1/completions", {**body, "temperature": 0.8})
        assert refused.status == 400
        assert "decodes greedily" in refused.body["error"]["message"]
