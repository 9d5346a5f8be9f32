"""Running the app under uvicorn: in the foreground (`tandem serve`) or on a thread.

Shutdown is graceful: on SIGINT/SIGTERM (or `BackgroundServer.stop`) the server stops
accepting connections, lets requests in flight finish for up to `shutdown_timeout_s`, then
closes the engine (queued requests are answered 503, the running one stops before its next
token).
"""

from __future__ import annotations

import functools
import socket
import threading
import time

import uvicorn

from ..errors import UsageError
from .app import create_app
from .protocol import GuardedH11Protocol
from .service import Service

__all__ = ["BackgroundServer", "bind", "serve"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; UsageError (one line) if the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another "
                         "--port (0 picks a free one) or --host") from None


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(service: Service, on_started=None, log_level: str = "info",
                    access_log: bool = True) -> uvicorn.Server:
    cfg = service.config
    # uvicorn's limit_concurrency would count idle connections too: the guard bounds them
    protocol = functools.partial(GuardedH11Protocol, read_timeout_s=cfg.read_timeout_s,
                                 max_connections=cfg.max_connections)
    config = uvicorn.Config(
        create_app(service, on_started), http=protocol, loop="asyncio", lifespan="on",
        log_level=log_level, access_log=access_log,
        timeout_keep_alive=cfg.keep_alive_s,
        timeout_graceful_shutdown=cfg.shutdown_timeout_s,
        ws="none",
    )
    return uvicorn.Server(config)


def serve(service: Service) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; print one line with the URL when ready."""
    sock = bind(service.config.host, service.config.port)
    facts = service.engine.backend.describe()
    where = ", ".join(f"{k} {v}" for k, v in facts.items())

    def ready() -> None:
        print(f"tandem serve: {service.model_name} ({where}) at {_url(sock)}/v1/completions",
              flush=True)

    _uvicorn_server(service, ready).run(sockets=[sock])


class BackgroundServer:
    """The same server on a thread of this process, for tests and scripts.

    `with BackgroundServer(service) as server: server.url ...`; leaving the block shuts it
    down gracefully and joins the thread.
    """

    def __init__(self, service: Service, start_timeout_s: float = 30.0) -> None:
        self.service = service
        self.start_timeout_s = start_timeout_s
        self._sock = bind(service.config.host, service.config.port)
        self.url = _url(self._sock)
        self._server = _uvicorn_server(service, log_level="warning", access_log=False)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="tandem-http", daemon=True)

    def start(self) -> BackgroundServer:
        self._thread.start()
        until = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > until:
                self.stop()
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Shut down gracefully, waiting at most shutdown_timeout_s (+ engine close) by default."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s if timeout_s is not None
                              else self.service.config.shutdown_timeout_s + 15)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
