"""Serving: an OpenAI-style HTTP API (`/v1/completions`, `/v1/models`, `/health`) in front
of any backend of `host.runtime.BACKENDS`.

`load_service` loads a checkpoint into an `Engine` (a bounded queue feeding one worker thread
that owns the backend); `create_app` is the FastAPI app; `serve` runs it under uvicorn in the
foreground, `BackgroundServer` on a thread; `protocol` bounds what slow or silent clients
can hold (request-head time, open connections).

Only `ServeConfig` is imported eagerly: the web stack (FastAPI, uvicorn, pydantic) loads on
first use, so other `tandem` commands do not pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ServeConfig

__all__ = [
    "ApiError",
    "BackgroundServer",
    "CompletionRequest",
    "CompletionText",
    "Engine",
    "EngineClosed",
    "Job",
    "QueueFull",
    "ServeConfig",
    "Service",
    "bind",
    "create_app",
    "load_service",
    "parse_completion_request",
    "serve",
]

_HOMES = {
    "create_app": "app",
    "Engine": "engine", "EngineClosed": "engine", "Job": "engine", "QueueFull": "engine",
    "ApiError": "schemas", "CompletionRequest": "schemas", "parse_completion_request": "schemas",
    "BackgroundServer": "server", "bind": "server", "serve": "server",
    "Service": "service", "load_service": "service",
    "CompletionText": "text",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
