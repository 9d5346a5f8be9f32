"""`tandem serve` against slow and hostile clients, on loopback: idle and half-sent-header
connections (slowloris), floods of huge prompts, inputs that used to answer 500, clients that
drop mid-body, and what the server reveals about itself.

Each test holds a bounded number of connections for a bounded time and cleans up after itself.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch

from host.runtime import BACKENDS, TorchBackend
from host.serving import BackgroundServer, ServeConfig, load_service

HTTP_TIMEOUT_S = 30


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextmanager
def running(checkpoint, **options):
    config = ServeConfig(**{"port": 0, "shutdown_timeout_s": 2, **options})
    service = load_service(config, checkpoint)
    with BackgroundServer(service) as server:
        yield server, service


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def call(url: str, path: str, body: Any = None, *, method: str = "POST",
         raw: bytes | None = None, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(*_address(url), timeout=timeout_s)
    try:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        try:
            return resp.status, json.loads(payload)
        except ValueError:
            return resp.status, payload.decode(errors="replace")
    finally:
        conn.close()


def assert_error(reply: tuple[int, Any], status: int, fragment: str = "") -> dict[str, Any]:
    code, body = reply
    assert code == status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error
    assert "\n" not in error["message"]
    return error


# -- slowloris ----------------------------------------------------------------------------------

N_IDLE = 150  # connections that never send a byte
N_HALF = 150  # connections that send half a request head and stop


def test_slowloris_connections_do_not_starve_real_clients(tiny_checkpoint):
    """300 idle or half-header connections against the default limit of 256 connections:
    real requests still succeed while every one of them is held open (they were all 503)."""
    with running(tiny_checkpoint) as (server, service), ExitStack() as held:
        assert service.config.max_connections == 256
        address = _address(server.url)
        for i in range(N_IDLE + N_HALF):
            sock = held.enter_context(socket.create_connection(address, timeout=5))
            if i >= N_IDLE:
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        time.sleep(0.3)  # let the server register them all
        print(f"holding {N_IDLE} idle + {N_HALF} half-header connections "
              f"(max_connections {service.config.max_connections})")
        for _ in range(3):
            begun = time.monotonic()
            status, body = call(server.url, "/health", method="GET", timeout_s=5)
            assert status == 200, body
            print(f"/health under slowloris: {(time.monotonic() - begun) * 1e3:.0f} ms")
            assert time.monotonic() - begun < 5.0
        status, body = call(server.url, "/v1/completions", {"prompt": "def f(", "max_tokens": 2},
                            timeout_s=10)
        assert status == 200, body
        assert len(body["choices"][0]["tandem"]["tokens"]) == 2


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


@pytest.mark.parametrize("after_a_request", [False, True], ids=["fresh", "keep-alive"])
def test_a_trickled_request_head_is_cut_off_after_read_timeout(tiny_checkpoint,
                                                              after_a_request):
    """A client that sends its head one byte at a time (each byte well inside any idle
    timeout) is disconnected once read_timeout_s has passed since it began to send it: on a
    new connection, and on a kept-alive one after a first request (where each byte used to
    cancel uvicorn's keep-alive timer)."""
    with running(tiny_checkpoint, read_timeout_s=1.0, keep_alive_s=1) as (server, _):
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        with socket.create_connection(_address(server.url), timeout=5) as sock:
            if after_a_request:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _read_response(sock).startswith(b"HTTP/1.1 200")
            begun = time.monotonic()
            closed_after = None
            for byte in head:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:  # reset by the server
                    closed_after = time.monotonic() - begun
                    break
                time.sleep(0.05)
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        closed_after = time.monotonic() - begun
                        break
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
                assert time.monotonic() - begun < 5, "the server never cut the slow head off"
        assert closed_after is not None
        print(f"slow head cut off after {closed_after:.2f} s (read_timeout_s 1)")
        assert 0.9 <= closed_after < 3.0


def test_when_every_connection_is_busy_a_new_one_gets_a_clean_503(tiny_checkpoint):
    """Requests in progress are never cut: beyond max_connections of them, one clean 503."""
    with running(tiny_checkpoint, max_connections=2, read_timeout_s=5.0) as (server, _):
        address = _address(server.url)
        with ExitStack() as held:
            for _ in range(2):  # heads complete, bodies pending: requests in progress
                sock = held.enter_context(socket.create_connection(address, timeout=5))
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            time.sleep(0.3)
            code, body = call(server.url, "/health", method="GET", timeout_s=5)
            assert_error((code, body), 503, "every connection")
        code, _ = call(server.url, "/health", method="GET", timeout_s=5)
        assert code == 200


def test_a_body_that_never_arrives_is_answered_408(tiny_checkpoint):
    with running(tiny_checkpoint, read_timeout_s=1.0) as (server, _):
        with socket.create_connection(_address(server.url), timeout=5) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"pro")
            begun = time.monotonic()
            reply = b""
            while chunk := sock.recv(65536):  # the server closes the connection after it
                reply += chunk
            assert time.monotonic() - begun < 4
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
        assert b"did not arrive within 1 s" in reply


# -- huge prompts -------------------------------------------------------------------------------

N_BIG = 20
BIG_PROMPT_CHARS = 950_000


def test_health_answers_within_a_second_while_huge_prompts_are_refused(tiny_checkpoint):
    """20 concurrent ~950 KB prompts (under the 1 MB body limit) are refused 400 without
    stalling the event loop: /health keeps answering within 1 s throughout."""
    words = "def handler(request):\n    return request.body.strip() + ' '\n"
    prompt = (words * (BIG_PROMPT_CHARS // len(words) + 1))[:BIG_PROMPT_CHARS]
    with running(tiny_checkpoint, queue_size=N_BIG) as (server, service):
        done = threading.Event()
        latencies: list[float] = []

        def probe() -> None:
            while not done.is_set():
                begun = time.monotonic()
                try:
                    status, _ = call(server.url, "/health", method="GET", timeout_s=10)
                except OSError:  # timed out: as good as no answer
                    status = None
                latencies.append(time.monotonic() - begun if status == 200 else float("inf"))
                time.sleep(0.02)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        try:
            with ThreadPoolExecutor(N_BIG) as pool:
                replies = list(pool.map(
                    lambda _: call(server.url, "/v1/completions",
                                   {"prompt": prompt, "max_tokens": 4}), range(N_BIG)))
        finally:
            done.set()
            prober.join(15)
    for reply in replies:
        error = assert_error(reply, 400, "cannot fit the model's context")
        assert error["code"] == "context_length_exceeded"
    assert len(latencies) >= 3
    print(f"/health: {len(latencies)} probes, max {max(latencies) * 1e3:.0f} ms")
    assert max(latencies) < 1.0, f"/health took up to {max(latencies):.2f} s (or failed)"
    assert service.engine.status()["accepted"] == 0


def test_tokenizing_runs_off_the_event_loop(tiny_checkpoint):
    """A tokenizer made slow (0.5 s per prompt, as a long prompt on a big vocabulary can be)
    holds up only its own requests: /health answers at once meanwhile."""
    with running(tiny_checkpoint) as (server, service):
        encode = service.tokenizer.encode

        def slow_encode(text: str) -> list[int]:
            time.sleep(0.5)
            return encode(text)

        service.tokenizer.encode = slow_encode
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(call, server.url, "/v1/completions",
                                   {"prompt": f"def f{i}(", "max_tokens": 1}) for i in range(3)]
            time.sleep(0.1)
            latencies = []
            for _ in range(5):
                begun = time.monotonic()
                assert call(server.url, "/health", method="GET", timeout_s=10)[0] == 200
                latencies.append(time.monotonic() - begun)
            assert all(f.result()[0] == 200 for f in pending)
    print(f"/health while tokenizing: max {max(latencies) * 1e3:.0f} ms")
    assert max(latencies) < 0.45  # less than one slow tokenization (0.5 s)


# -- inputs that answered 500 -------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"prompt": "x", "temperature": 1e-300}', "at least 0.001"),
    (b'{"prompt": "x", "temperature": 1e-50, "max_tokens": 2}', "at least 0.001"),
    (b'{"prompt": "\\ud800"}', "lone UTF-16 surrogate"),
    (b'{"prompt": "ok", "stop": ["\\udfff"]}', "lone UTF-16 surrogate"),
    (b'{"prompt": "x", "user": "a\\ud800b"}', "lone UTF-16 surrogate"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "deeper than 16 levels"),
    (b"[" * 50 + b"]" * 50, "deeper than 16 levels"),
    (b'{"prompt": "x", "logit_bias": ' + b'{"a":' * 40 + b"1" + b"}" * 41,
     "deeper than 16 levels"),
])
def test_inputs_that_were_500_are_answered_400(tiny_checkpoint, raw, fragment):
    with running(tiny_checkpoint) as (server, service):
        assert_error(call(server.url, "/v1/completions", raw=raw), 400, fragment)
        assert service.engine.status()["accepted"] == 0
        assert call(server.url, "/health", method="GET")[0] == 200


# -- a client dropping mid-body -----------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_dropping_mid_body_logs_one_line(tiny_checkpoint):
    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "tandem.serving")]
    handler = _Records()
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with running(tiny_checkpoint) as (server, _):
            for _ in range(3):
                with socket.create_connection(_address(server.url), timeout=5) as sock:
                    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
                                 b"\r\n{\"prompt\": \"abc")
                    time.sleep(0.1)
            deadline = time.monotonic() + 5
            while len(handler.records) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            assert call(server.url, "/health", method="GET")[0] == 200
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    lines = [r.getMessage() for r in handler.records]
    assert not [r for r in handler.records if r.exc_info], lines
    dropped = [m for m in lines if "disconnected" in m]
    assert len(dropped) == 3, lines
    assert all("\n" not in m for m in lines)


# -- what the server reveals --------------------------------------------------------------------

def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


class _BoardLike(TorchBackend):
    """The torch backend describing itself as the board backend does: with a file path."""

    def __init__(self, model, xclbin: str) -> None:
        super().__init__(model)
        self.xclbin = xclbin

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "xclbin": self.xclbin}


def test_no_absolute_paths_and_no_cdn_docs(tiny_checkpoint, tmp_path, monkeypatch):
    xclbin = str(tmp_path / "secret-dir" / "tandem.xclbin")
    monkeypatch.setitem(BACKENDS, "boardlike", lambda model, **_: _BoardLike(model, xclbin))
    config = ServeConfig(port=0, shutdown_timeout_s=2)
    service = load_service(config, tiny_checkpoint, backend="boardlike")
    with BackgroundServer(service) as server:
        replies = {path: call(server.url, path, method="GET")
                   for path in ("/health", "/v1/models")}
        replies["/v1/completions"] = call(server.url, "/v1/completions",
                                          {"prompt": "x", "max_tokens": 1})
        for path, (status, body) in replies.items():
            assert status == 200, (path, body)
            strings = list(_strings(body))
            leaks = [s for s in strings if os.path.isabs(s) or str(tmp_path) in s
                     or str(tiny_checkpoint) in s]
            assert not leaks, (path, leaks)
            assert "tandem.xclbin" in strings  # the name is reported, not the path
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            status, body = call(server.url, path, method="GET")
            assert status == 404, (path, body)
            assert "cdn" not in json.dumps(body)
