"""The HTTP API (FastAPI): `/v1/completions` in OpenAI's shape, `/v1/models`, `/health`.

Handlers only parse, check and queue; the model runs on the engine's worker thread, never on
the event loop. Every error is answered in OpenAI's shape `{"error": {message, type, param,
code}}`:

| status | when |
|---|---|
| 400 | malformed JSON (also nested deeper than 16 levels, or with a lone surrogate), a
        missing/ill-typed/unsupported field, an empty prompt, a prompt + max_tokens beyond
        the context (a prompt text too long to fit is refused before it is tokenized) |
| 404 | a model name this server does not serve (`model_not_found`); an unknown path |
| 405 | an unknown method |
| 408 | the request body did not arrive within `read_timeout_s` |
| 413 | a body above `max_body_bytes` |
| 429 | the queue is full (`Retry-After` says when to try again) |
| 500 | the backend failed |
| 503 | timed out waiting in the queue (`Retry-After`), the server is shutting down, or every
        connection has a request in progress (see `protocol`) |
| 504 | timed out generating (the limit is queue wait + generation) |

`prompt` may be a list of prompts (texts or token-id lists): each is one job in the queue,
queued together or not at all, and one choice (`index` in prompt order); they run in order,
and a streamed answer sends each choice's chunks in turn.

A streamed request has its status decided before the first byte: it waits for the backend
(or fails with the codes above), then streams 200 with one `data: {chunk}` per token, a last
chunk with `finish_reason`, and `data: [DONE]`; an error after that point arrives as one
`data: {"error": ...}` event before `[DONE]`. A client that disconnects cancels its request,
queued or running.

`suffix` (fill-in-the-middle): the prompt text is the prefix; the model gets the PSM order
<pre> prompt <suf> suffix <mid> and writes the middle, which ends at the end-of-middle sentinel
(finish_reason "stop", the sentinel left out of the text). A 400 on `suffix` when the model's
tokenizer has no FIM sentinels (train one with `tandem train --fim-rate`) or the prompt is
token ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from models.tokenizer import FIM_END

from ..runtime import GenerationRequest
from .engine import EngineClosed, Failed, Finished, Job, QueueFull, Started, TokenEvent
from .schemas import (
    ApiError,
    CompletionRequest,
    completion_choice,
    completion_chunk,
    completion_response,
    error_body,
    parse_completion_request,
)
from .service import Service

__all__ = ["create_app"]

ROUTES = "POST /v1/completions, GET /v1/models, GET /health"

log = logging.getLogger("tandem.serving")


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


def _stops(request: CompletionRequest) -> list[str]:
    """The request's stop strings; an infill (suffix) also ends at the end-of-middle sentinel,
    whose text the completion leaves out as it does a stop string's."""
    return [*request.stop, FIM_END] if request.suffix is not None else list(request.stop)


class _Completion:
    """One prompt's trip through the engine, seen from the event loop (choice `index`)."""

    def __init__(self, service: Service, request: CompletionRequest, prompt_ids: list[int],
                 http_request: Request, index: int = 0, id_: str | None = None,
                 created: int | None = None) -> None:
        self.service = service
        self.request = request
        self.prompt_ids = prompt_ids
        self.http = http_request
        self.index = index
        self.id = id_ or f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time()) if created is None else created
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
            deadline=self.deadline, stop=_stops(request))

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
            **self.service.backend_facts(),
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

    async def choice(self) -> tuple[dict[str, Any], int]:
        """The non-streaming choice, and how many tokens it generated."""
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
        return completion_choice(index=self.index, text=event.full_text,
                                 finish_reason=event.reason,
                                 tandem=self.tandem(steps, event)), len(event.tokens)

    async def stream(self) -> AsyncIterator[str | Finished]:
        """This choice's Server-Sent Events after its job has started, then its Finished
        event (not an SSE; the caller sums usage from it). Ends early after a failure event."""
        model, steps_ms = self.service.model_name, 0.0
        try:
            while True:
                event = await self.next_event()
                if isinstance(event, TokenEvent):
                    steps_ms += event.step.ms
                    yield _sse(completion_chunk(
                        id_=self.id, created=self.created, model=model, text=event.text,
                        finish_reason=None, tandem=event.step.to_json(), index=self.index))
                elif isinstance(event, Failed):
                    yield _sse(_failure(event, self.retry_after_s()).body())
                    return
                elif isinstance(event, Finished):
                    summary = {**self.tandem(None, event), "total_ms": round(steps_ms, 3)}
                    yield _sse(completion_chunk(
                        id_=self.id, created=self.created, model=model, text=event.text,
                        finish_reason=event.reason, tandem=summary, index=self.index))
                    yield event
                    return
        finally:
            self.cancel()


class _Batch:
    """A request's completions, one per prompt, queued together and answered in order."""

    def __init__(self, service: Service, request: CompletionRequest,
                 prompt_ids: list[list[int]], http_request: Request) -> None:
        self.service = service
        self.request = request
        first = _Completion(service, request, prompt_ids[0], http_request)
        self.parts = [first] + [
            _Completion(service, request, ids, http_request, index=i, id_=first.id,
                        created=first.created) for i, ids in enumerate(prompt_ids[1:], 1)]

    def submit(self) -> None:
        try:
            self.service.engine.submit_all([c.job for c in self.parts])
        except QueueFull as e:
            raise ApiError(429, f"{e}; retry in {e.retry_after_s} s", code="queue_full",
                           headers={"Retry-After": str(e.retry_after_s)}) from None
        except EngineClosed as e:
            raise ApiError(503, f"{e}; retry later", code="shutting_down",
                           headers={"Retry-After": "5"}) from None

    def cancel(self) -> None:
        for c in self.parts:
            c.cancel()

    async def complete(self) -> JSONResponse:
        """The non-streaming answer: every choice, in prompt order."""
        try:
            choices, n_gen = [], 0
            for c in self.parts:
                choice, n = await c.choice()
                choices.append(choice)
                n_gen += n
        finally:
            self.cancel()
        first = self.parts[0]
        return JSONResponse(completion_response(
            id_=first.id, created=first.created, model=self.service.model_name,
            choices=choices, prompt_tokens=sum(len(c.prompt_ids) for c in self.parts),
            completion_tokens=n_gen))

    async def stream(self) -> AsyncIterator[str]:
        """Every choice's events in turn (the queue runs them in order), then `[DONE]`."""
        n_gen = 0
        try:
            for c in self.parts:
                finished = None
                async for item in c.stream():
                    if isinstance(item, Finished):
                        finished = item
                    else:
                        yield item
                if finished is None:  # it failed: the error event has been sent
                    break
                n_gen += len(finished.tokens)
            else:
                options = self.request.stream_options
                if options is not None and options.include_usage:
                    first = self.parts[0]
                    n_prompt = sum(len(c.prompt_ids) for c in self.parts)
                    usage = {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
                             "total_tokens": n_prompt + n_gen}
                    yield _sse(completion_chunk(id_=first.id, created=first.created,
                                                model=self.service.model_name, text=None,
                                                finish_reason=None, usage=usage))
            yield _sse("[DONE]")
        finally:
            self.cancel()


class _JobStream(StreamingResponse):
    """The SSE response; however it ends (done, client gone, cancelled), the jobs end too."""

    def __init__(self, batch: _Batch) -> None:
        super().__init__(batch.stream(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})
        self.batch = batch

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.batch.cancel()


#: Deepest nesting of arrays/objects a request body may have (a completion request needs 3).
MAX_JSON_DEPTH = 16


def _check_json(data: Any) -> None:
    """Refuse what json.loads accepts but the server cannot use: deep nesting and strings with
    lone surrogates (`"\\ud800"` is valid JSON, but no UTF-8 text). Iterative, so no
    nesting depth can exhaust the stack."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "the request body has a string with a lone UTF-16 "
                               "surrogate (such as \\ud800), which is not text; send valid "
                               "Unicode", code="invalid_json") from None
            continue
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(400, f"the request body nests arrays/objects deeper than "
                               f"{MAX_JSON_DEPTH} levels", code="invalid_json")
            if isinstance(value, list) and not any(isinstance(v, str | list | dict)
                                                   for v in value):
                continue  # numbers only (token ids): the common large case
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for key, item in items:
                if key is not None:
                    stack.append((key, depth))
                stack.append((item, depth + 1))


async def _read_json(request: Request, limit: int, timeout_s: float) -> Any:
    """The request body as JSON, read up to `limit` bytes within `timeout_s`; ApiError
    400/408/413 otherwise, _Disconnected if the client goes away while sending it."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, f"the request body exceeds {limit} bytes; send a shorter prompt",
                       code="body_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_big
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s",
                       code="request_timeout", headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise _Disconnected from None
    if not body:
        raise ApiError(400, "the request body is empty; send a JSON object such as "
                       '{"prompt": "def f(", "max_tokens": 16}', code="invalid_json")

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        data = json.loads(body, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}",
                       code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, f"the request body nests arrays/objects deeper than "
                       f"{MAX_JSON_DEPTH} levels", code="invalid_json") from None
    _check_json(data)
    return data


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

    # No /docs or /redoc: those pages load their scripts from a CDN. /openapi.json stays.
    app = FastAPI(title="Tandem", summary="OpenAI-style completions from a Tandem backend",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    # Tokenizing is the one CPU-heavy step before the queue: off the event loop, two at a time.
    tokenizing = anyio.CapacityLimiter(2)

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
        """OpenAI's completions: one choice per prompt, streamed or not."""
        try:
            data = await _read_json(request, service.config.max_body_bytes,
                                    service.config.read_timeout_s)
        except _Disconnected:
            client = request.client
            who = f"{client.host}:{client.port}" if client else "a client"
            log.warning("%s disconnected while sending its request body", who)
            return JSONResponse(error_body("client disconnected", "invalid_request_error"),
                                status_code=499)
        parsed = parse_completion_request(data)
        service.check_model(parsed.model)
        prompts = parsed.prompts()
        if len(prompts) > service.config.queue_size:
            raise ApiError(400, f"{len(prompts)} prompts cannot fit this server's queue of "
                           f"{service.config.queue_size}; send fewer per request",
                           param="prompt", code="too_many_prompts")
        for prompt in prompts:  # cheap checks first, on the loop: no tokenizing of hopeless text
            service.check_prompt_size(prompt, parsed)
        prompt_ids = []
        for prompt in prompts:
            prompt_ids.append(await anyio.to_thread.run_sync(
                service.prompt_ids, prompt, parsed, limiter=tokenizing))
        batch = _Batch(service, parsed, prompt_ids, request)
        batch.submit()
        try:
            if not parsed.stream:
                return await batch.complete()
            await batch.parts[0].wait_started()
        except _Disconnected:
            return JSONResponse(error_body("client disconnected", "invalid_request_error"),
                                status_code=499)
        except BaseException:
            batch.cancel()
            raise
        return _JobStream(batch)

    return app
