"""Shared by the serving tests: a server running in the background for the length of a
`with` block, and a plain HTTP client (http.client, one connection per request) that parses
JSON answers and server-sent event streams."""

from __future__ import annotations

import http.client
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from host.serving import BackgroundServer, ServeConfig, load_service

#: how long a client waits for any answer before the test fails
HTTP_TIMEOUT_S = 30


@contextmanager
def running(checkpoint, backend: str = "torch", **options):
    """`tandem serve` of `checkpoint` on a free port; yields (server, service)."""
    config = ServeConfig(**{"port": 0, "shutdown_timeout_s": 5, **options})
    service = load_service(config, checkpoint, backend=backend)
    with BackgroundServer(service) as server:
        yield server, service



@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or the list of SSE data payloads (JSON or "[DONE]")


def connect(url: str, timeout: float = HTTP_TIMEOUT_S) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def _sse(payload: bytes) -> list[Any]:
    events = []
    for block in payload.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            data = block.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def call(url: str, path: str, body: Any = None, *, method: str = "POST", raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    conn = connect(url)
    try:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        payload = resp.read()
        head = {k.lower(): v for k, v in resp.getheaders()}
        if head.get("content-type", "").startswith("text/event-stream"):
            return Reply(resp.status, head, _sse(payload))
        return Reply(resp.status, head, json.loads(payload))
    finally:
        conn.close()
