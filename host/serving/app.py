"""The HTTP API (FastAPI): `/v1/completions` in OpenAI's shape, `/v1/models`, `/health`.

Handlers only parse, check and queue; the model runs on the engine's worker thread, never on
the event loop. Every error is answered in OpenAI's shape `{"error": {message, type, param,
code}}`:

| status | when |
|---|---|
| 400 | malformed JSON, a missing/ill-typed/unsupported field, an empty prompt, a prompt +
        max_tokens beyond the context, a model name this server does not serve |
| 404, 405 | an unknown path or method |
| 413 | a body above `max_body_bytes` |
| 429 | the queue is full (`Retry-After` says when to try again) |
| 500 | the backend failed |
| 503 | timed out waiting in the queue (`Retry-After`), or the server is shutting down |
| 504 | timed out generating (the limit is queue wait + generation) |

A streamed request has its status decided before the first byte: it waits for the backend
(or fails with the codes above), then streams 200 with one `data: {chunk}` per token, a last
chunk with `finish_reason`, and `data: [DONE]`; an error after that point arrives as one
`data: {"error": ...}` event before `[DONE]`. A client that disconnects cancels its request,
queued or running.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..runtime import GenerationRequest
from .engine import EngineClosed, Failed, Finished, Job, QueueFull, Started, TokenEvent
from .schemas import (
    ApiError,
    CompletionRequest,
    completion_chunk,
    completion_response,
    error_body,
    parse_completion_request,
)
from .service import Service

__all__ = ["create_app"]

ROUTES = "POST /v1/completions, GET /v1/models, GET /health"


class _Disconnected(Exception):
    """The client closed the connection before its answer."""


def _failure(event: Failed, retry_after_s: int) -> ApiError:
    """The HTTP answer to a job that ended without a completion."""
    if event.code in ("queue_timeout", "shutdown"):
        return ApiError(503, event.message, code=event.code,
                        headers={"Retry-After": str(retry_after_s)})
    if event.code == "generation_timeout":
        return ApiError(504, event.message + "; lower max_tokens or raise the server's "
                        "--request-timeout-s", code=event.code)
    return ApiError(500, event.message, code=event.code)


def _sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


class _Completion:
    """One request's trip through the engine, seen from the event loop."""

    def __init__(self, service: Service, request: CompletionRequest, prompt_ids: list[int],
                 http_request: Request) -> None:
        self.service = service
        self.request = request
        self.prompt_ids = prompt_ids
        self.http = http_request
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.tokens = 0  # TokenEvents seen
        self.started: Started | None = None
        self.ended = False
        loop = asyncio.get_running_loop()
        timeout_s = service.config.request_timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.job = Job(
            GenerationRequest(prompt_ids, request.max_tokens, request.temperature,
                              request.top_k, request.seed),
            sink=lambda event: loop.call_soon_threadsafe(self.events.put_nowait, event),
            deadline=self.deadline, stop=request.stop)

    def submit(self) -> None:
        try:
            self.service.engine.submit(self.job)
        except QueueFull as e:
            raise ApiError(429, f"{e}; retry in {e.retry_after_s} s", code="queue_full",
                           headers={"Retry-After": str(e.retry_after_s)}) from None
        except EngineClosed as e:
            raise ApiError(503, f"{e}; retry later", code="shutting_down",
                           headers={"Retry-After": "5"}) from None

    def cancel(self) -> None:
        if not self.ended:
            self.ended = True
            self.service.engine.cancel(self.job)

    async def next_event(self) -> Started | TokenEvent | Finished | Failed:
        """The job's next event; a Failed one when the deadline passes (the job is cancelled)."""
        try:
            event = await asyncio.wait_for(self.events.get(), self.deadline - time.monotonic())
        except TimeoutError:
            self.cancel()
            timeout_s = self.service.config.request_timeout_s
            if self.started is None:
                return Failed("queue_timeout", f"timed out after waiting {timeout_s:.1f} s in "
                              "the queue; the server is overloaded, retry later")
            return Failed("generation_timeout", f"timed out after {self.tokens} of "
                          f"{self.request.max_tokens} tokens ({timeout_s:.1f} s)")
        if isinstance(event, _Disconnected):
            self.cancel()
            raise event
        if isinstance(event, Started):
            self.started = event
        elif isinstance(event, TokenEvent):
            self.tokens += 1
        else:
            self.ended = True
        return event

    def retry_after_s(self) -> int:
        return self.service.engine.wait_estimate_s()

    def tandem(self, steps: list[dict[str, Any]] | None, finished: Finished) -> dict[str, Any]:
        """Tandem's figures for the whole completion."""
        queue_ms = self.started.queue_ms if self.started else 0.0
        figures: dict[str, Any] = {
            **self.service.engine.backend.describe(),
            "tokens": finished.tokens, "seed": self.request.seed,
            "temperature": self.request.temperature, "top_k": self.request.top_k,
            "queue_ms": round(queue_ms, 3),
        }
        if steps is not None:
            total_ms = sum(s["ms"] for s in steps)
            figures.update(total_ms=round(total_ms, 3), steps=steps)
        return figures

    async def watch_disconnect(self) -> None:
        """Put a _Disconnected on the event queue when the client goes away."""
        while True:
            message = await self.http.receive()
            if message["type"] == "http.disconnect":
                self.events.put_nowait(_Disconnected())
                return

    async def wait_started(self) -> None:
        """Wait until the backend takes the job; raise ApiError if it never will."""
        watcher = asyncio.create_task(self.watch_disconnect())
        try:
            event = await self.next_event()
        finally:
            watcher.cancel()
        if isinstance(event, Failed):
            raise _failure(event, self.retry_after_s())

    async def complete(self) -> JSONResponse:
        """The non-streaming answer."""
        watcher = asyncio.create_task(self.watch_disconnect())
        steps: list[dict[str, Any]] = []
        try:
            while True:
                event = await self.next_event()
                if isinstance(event, TokenEvent):
                    steps.append(event.step.to_json())
                elif isinstance(event, Failed):
                    raise _failure(event, self.retry_after_s())
                elif isinstance(event, Finished):
                    break
        finally:
            watcher.cancel()
            self.cancel()
        return JSONResponse(completion_response(
            id_=self.id, created=self.created, model=self.service.model_name,
            text=event.full_text, finish_reason=event.reason,
            prompt_tokens=len(self.prompt_ids), completion_tokens=len(event.tokens),
            tandem=self.tandem(steps, event)))

    async def stream(self) -> AsyncIterator[str]:
        """The Server-Sent Events after the job has started. Cancelled on disconnect."""
        model, steps_ms = self.service.model_name, 0.0
        try:
            while True:
                event = await self.next_event()
                if isinstance(event, TokenEvent):
                    steps_ms += event.step.ms
                    yield _sse(completion_chunk(
                        id_=self.id, created=self.created, model=model, text=event.text,
                        finish_reason=None, tandem=event.step.to_json()))
                elif isinstance(event, Failed):
                    yield _sse(_failure(event, self.retry_after_s()).body())
                    break
                elif isinstance(event, Finished):
                    summary = {**self.tandem(None, event), "total_ms": round(steps_ms, 3)}
                    yield _sse(completion_chunk(
                        id_=self.id, created=self.created, model=model, text=event.text,
                        finish_reason=event.reason, tandem=summary))
                    options = self.request.stream_options
                    if options is not None and options.include_usage:
                        n_prompt, n_gen = len(self.prompt_ids), len(event.tokens)
                        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
                                 "total_tokens": n_prompt + n_gen}
                        yield _sse(completion_chunk(id_=self.id, created=self.created,
                                                    model=model, text=None, finish_reason=None,
                                                    usage=usage))
                    break
            yield _sse("[DONE]")
        finally:
            self.cancel()


class _JobStream(StreamingResponse):
    """The SSE response; however it ends (done, client gone, cancelled), the job ends too."""

    def __init__(self, completion: _Completion) -> None:
        super().__init__(completion.stream(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})
        self.completion = completion

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.completion.cancel()


async def _read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, read up to `limit` bytes; ApiError 400/413 otherwise."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, f"the request body exceeds {limit} bytes; send a shorter prompt",
                       code="body_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    if not body:
        raise ApiError(400, "the request body is empty; send a JSON object such as "
                       '{"prompt": "def f(", "max_tokens": 16}', code="invalid_json")

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(body, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}",
                       code="invalid_json") from None


def create_app(service: Service, on_started: Callable[[], None] | None = None) -> FastAPI:
    """The ASGI app. Its lifespan starts the engine's worker, and on shutdown closes it
    (failing queued requests, stopping the running one before its next token)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.engine.start()
        if on_started is not None:
            on_started()
        yield
        await anyio.to_thread.run_sync(service.engine.close)

    app = FastAPI(title="Tandem", summary="OpenAI-style completions from a Tandem backend",
                  lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = (f"no route for {request.method} {request.url.path}; this server "
                       f"answers {ROUTES}")
        type_ = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return JSONResponse(error_body(message, type_, code=str(exc.status_code)),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}",
                                       "server_error", code="internal_error"), status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 with the model, backend and queue while serving; 503 once shutting down."""
        queue = service.engine.status()
        body = {"status": "shutting_down" if queue["closed"] else "ok", **service.facts(),
                "queue": queue}
        return JSONResponse(body, status_code=503 if queue["closed"] else 200)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": service.model_name, "object": "model", "created": 0, "owned_by": "tandem",
            "tandem": service.facts()}]}

    @app.post("/v1/completions", openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/json": {"schema": CompletionRequest.model_json_schema()}}}})
    async def completions(request: Request):
        """OpenAI's completions: one prompt, one choice, streamed or not."""
        data = await _read_json(request, service.config.max_body_bytes)
        parsed = parse_completion_request(data)
        service.check_model(parsed.model)
        prompt_ids = service.prompt_ids(parsed)
        completion = _Completion(service, parsed, prompt_ids, request)
        completion.submit()
        try:
            if not parsed.stream:
                return await completion.complete()
            await completion.wait_started()
        except _Disconnected:
            return JSONResponse(error_body("client disconnected", "invalid_request_error"),
                                status_code=499)
        except BaseException:
            completion.cancel()
            raise
        return _JobStream(completion)

    return app
