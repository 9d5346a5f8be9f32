"""The HTTP connection guard: uvicorn's h11 protocol, bounded against slow and silent clients.

uvicorn's own limits do not stop a slowloris: its keep-alive timer runs only after a response
and any byte received cancels it, so a connection that sends half a request head (or nothing)
is held for ever, and `limit_concurrency` counts such connections, so a few hundred of them
make every real request get 503. Here instead:

- a connection waiting for a request head (new, or between requests) has `read_timeout_s` to
  send the whole head, however it trickles in; then it is closed;
- at most `max_connections` are open: a new connection beyond that closes the one that has
  waited longest for a request head, so idle connections never lock real clients out. Only
  when every open connection has a request in progress is the new one answered 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardedH11Protocol"]

log = logging.getLogger("tandem.serving")


def _busy_response() -> bytes:
    body = json.dumps({"error": {
        "message": "every connection of this server has a request in progress; retry shortly",
        "type": "server_error", "param": None, "code": "too_many_connections"}}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n")
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """One HTTP/1.1 connection; see the module docstring for the two guards."""

    def __init__(self, *args: Any, read_timeout_s: float, max_connections: int,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self._head_timer: asyncio.TimerHandle | None = None
        self.waiting_since = time.monotonic()  # when it began to wait for a request head

    @property
    def waiting_for_head(self) -> bool:
        """No request in progress: new, or idle between requests (maybe with half a head)."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self.waiting_since = time.monotonic()
        self._head_timer = self.loop.call_later(self.read_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.waiting_for_head and not self.transport.is_closing():
            log.debug("closing %s: no request head within %g s", self.client,
                      self.read_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.max_connections:
            idle = [c for c in self.connections if c is not self
                    and isinstance(c, GuardedH11Protocol) and c.waiting_for_head
                    and not c.transport.is_closing()]
            if idle:
                victim = min(idle, key=lambda c: c.waiting_since)
                victim._disarm()
                victim.transport.close()
            else:
                log.warning("refused a connection: all %d have a request in progress",
                            len(self.connections) - 1)
                self._disarm()
                transport.write(_busy_response())
                transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.waiting_for_head:  # a whole head arrived: the request is under way
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request at once
        if self.waiting_for_head and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
