"""`Engine`: one generation backend, fed by a bounded FIFO of jobs, run on one worker thread.

A backend runs one sequence at a time (an FPGA appliance holds one KV cache), so the engine
owns it alone: `submit` queues a job or refuses it at once (`QueueFull`), the worker thread
runs jobs in arrival order and reports each one's progress through the job's `sink`, a
callable that must be safe to call from another thread (the HTTP layer hands events to its
event loop). Cancelling a job (client gone, timeout) takes it out of the queue, or stops its
generation before the next token. Nothing here knows about HTTP or asyncio.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from models import Tokenizer

from ..runtime import GenerationBackend, GenerationRequest, Step
from .text import CompletionText

__all__ = [
    "Engine",
    "EngineClosed",
    "Failed",
    "Finished",
    "Job",
    "QueueFull",
    "Started",
    "TokenEvent",
]

log = logging.getLogger("tandem.serving")


@dataclass(frozen=True)
class Started:
    queue_ms: float  # time spent waiting for the backend


@dataclass(frozen=True)
class TokenEvent:
    step: Step  # the backend's step: token id, ms, backend figures
    text: str  # the text this token releases (maybe "")


@dataclass(frozen=True)
class Finished:
    reason: str  # "length" (max_tokens reached) or "stop" (a stop string was generated)
    text: str  # the text released at the end (held-back tail)
    tokens: list[int]  # every generated id, the one that completed a stop string included
    full_text: str  # the whole completion text


@dataclass(frozen=True)
class Failed:
    code: str  # "queue_timeout", "generation_timeout", "backend_error", "shutdown"
    message: str  # one line for the client


Event = Started | TokenEvent | Finished | Failed


class QueueFull(Exception):
    """The queue holds `queue_size` jobs; `retry_after_s` estimates when a slot frees."""

    def __init__(self, queue_size: int, retry_after_s: int) -> None:
        super().__init__(f"the queue is full ({queue_size} requests waiting)")
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s


class EngineClosed(Exception):
    """The engine is shutting down and takes no more jobs."""


@dataclass(eq=False)
class Job:
    """One generation: what to run, when it must be done by, and where its events go."""

    request: GenerationRequest
    sink: Callable[[Event], None]  # thread-safe; receives Started, TokenEvent..., then the end
    deadline: float  # time.monotonic() past which the job is abandoned
    stop: Sequence[str] = ()  # stop strings; generation ends at the first one
    enqueued_at: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except Exception:  # the receiver is gone (event loop closed): nobody is listening
            self.cancelled.set()


class Engine:
    """Runs jobs one at a time on a worker thread that alone touches the backend."""

    def __init__(self, backend: GenerationBackend, tokenizer: Tokenizer, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        self.backend = backend
        self.tokenizer = tokenizer
        self.queue_size = queue_size
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._job_s = 1.0  # running mean of job time, for Retry-After
        self._thread = threading.Thread(target=self._work, name="tandem-engine", daemon=True)
        self.counts = dict.fromkeys(
            ("accepted", "rejected", "completed", "cancelled", "timed_out", "failed"), 0)

    # -- the HTTP side ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise QueueFull / EngineClosed at once; never blocks."""
        self.submit_all([job])

    def submit_all(self, jobs: Sequence[Job]) -> None:
        """Queue every job of `jobs` one after the other, or none of them (QueueFull /
        EngineClosed at once when they do not all fit); never blocks."""
        with self._cond:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            if len(self._waiting) + len(jobs) > self.queue_size:
                self.counts["rejected"] += len(jobs)
                raise QueueFull(self.queue_size, self._wait_estimate_s())
            self.counts["accepted"] += len(jobs)
            self._waiting.extend(jobs)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Abandon `job`: drop it from the queue, or stop it before its next token."""
        with self._cond:
            if job.cancelled.is_set():
                return
            job.cancelled.set()
            if job in self._waiting:
                self._waiting.remove(job)
                self.counts["cancelled"] += 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new jobs, fail the queued ones, stop the running one, join the worker."""
        with self._cond:
            self._closed = True
            dropped = list(self._waiting)
            self._waiting.clear()
            self.counts["cancelled"] += len(dropped)
            if self._running is not None:
                self._running.cancelled.set()
            self._cond.notify_all()
        for job in dropped:
            job.cancelled.set()
            job.emit(Failed("shutdown", "the server shut down before this request ran"))
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def wait_estimate_s(self) -> int:
        """Whole seconds (>= 1) until a job queued now would start, from recent job times."""
        with self._cond:
            return self._wait_estimate_s()

    def _wait_estimate_s(self) -> int:
        return max(1, math.ceil((len(self._waiting) + 1) * self._job_s))

    def status(self) -> dict[str, Any]:
        """Queue capacity and occupancy, and how many jobs ended which way, since start."""
        with self._cond:
            return {"capacity": self.queue_size, "waiting": len(self._waiting),
                    "running": int(self._running is not None), "closed": self._closed,
                    **self.counts}

    # -- the worker thread --------------------------------------------------------------------

    def _next(self) -> Job | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            self._running = self._waiting.popleft()
            return self._running

    def _work(self) -> None:
        while (job := self._next()) is not None:
            begun = time.monotonic()
            try:
                outcome = self._run(job)
            except Exception as e:  # a backend bug must not kill the worker
                log.exception("backend %s failed", self.backend.name)
                outcome = "failed"
                job.emit(Failed("backend_error", f"generation on the {self.backend.name} "
                                f"backend failed: {type(e).__name__}: {e}"))
            with self._cond:
                self._running = None
                self.counts[outcome] += 1
                self._job_s = 0.8 * self._job_s + 0.2 * (time.monotonic() - begun)

    def _cancelled_event(self) -> Failed:
        if self._closed:
            return Failed("shutdown", "the server shut down while this request ran")
        return Failed("cancelled", "the request was cancelled")

    def _run(self, job: Job) -> str:
        """Run one job to its end; return the `counts` key of how it ended."""
        now = time.monotonic()
        queue_s = now - job.enqueued_at
        if job.cancelled.is_set():
            return "cancelled"
        if now > job.deadline:
            job.emit(Failed("queue_timeout", f"timed out after waiting {queue_s:.1f} s in the "
                            "queue; the server is overloaded, retry later"))
            return "timed_out"
        job.emit(Started(queue_s * 1e3))
        text = CompletionText(self.tokenizer, job.stop)
        steps = self.backend.stream(job.request)
        try:
            for step in steps:
                job.emit(TokenEvent(step, text.push(step.token)))
                if text.stopped:
                    break
                if job.cancelled.is_set():
                    job.emit(self._cancelled_event())
                    return "cancelled"
                if time.monotonic() > job.deadline:
                    job.emit(Failed("generation_timeout", f"timed out after {len(text.tokens)} "
                                    f"of {job.request.max_new_tokens} tokens"))
                    return "timed_out"
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()  # ends the backend's generator now, not at garbage collection
        tail = text.finish()
        job.emit(Finished("stop" if text.stopped else "length", tail, list(text.tokens),
                          text.text))
        return "completed"
