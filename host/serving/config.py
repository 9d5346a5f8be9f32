"""`ServeConfig`: how `tandem serve` listens, queues and times out, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  #: address to listen on (0.0.0.0 for every interface)
    port: int = 8000  #: TCP port; 0 picks a free one and prints it
    queue_size: int = 16  #: prompts that may wait while one runs; more are answered 429
    request_timeout_s: float = 120.0  #: limit on queue wait + generation per request
    max_body_bytes: int = 1_000_000  #: largest request body accepted; larger is answered 413
    keep_alive_s: int = 5  #: idle HTTP keep-alive before the server closes the connection
    read_timeout_s: float = 10.0  #: time a client has to send its request head, and its body
    shutdown_timeout_s: int = 30  #: on SIGINT/SIGTERM, wait this long for requests in flight
    max_connections: int = 256  #: open connections; beyond it the longest-idle one is closed
    model_name: str = ""  #: the `model` clients name; default: the checkpoint's folder name

    def __post_init__(self) -> None:
        def _int(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low or (
                    high is not None and value > high):
                bound = f">= {low}" if high is None else f"in {low}..{high}"
                raise UsageError(f"{name} must be an integer {bound}, not {value!r}")

        _int("port", 0, 65535)
        _int("queue_size", 1)
        _int("max_body_bytes", 1)
        _int("keep_alive_s", 1)
        _int("shutdown_timeout_s", 0)
        _int("max_connections", 1)
        for name in ("request_timeout_s", "read_timeout_s"):
            timeout = getattr(self, name)
            if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not (
                    math.isfinite(timeout) and timeout > 0):
                raise UsageError(f"{name} must be a positive number, not {timeout!r}")
        if not isinstance(self.host, str) or not self.host:
            raise UsageError(f"host must be an address such as 127.0.0.1, not {self.host!r}")
        if not isinstance(self.model_name, str):
            raise UsageError(f"model_name must be a string, not {self.model_name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServeConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise UsageError(f"unknown serve option {unknown[0]!r}; "
                             f"known: {', '.join(sorted(names))}")
        return cls(**raw)
