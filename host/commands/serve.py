"""Serve a model over HTTP with OpenAI's completions API, on any backend.

  tandem serve --port 8000
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "def fibonacci(n):", "max_tokens": 32}'

Endpoints: POST /v1/completions (add "stream": true for Server-Sent Events), GET /v1/models,
GET /health. One request runs at a time on the backend; up to --queue-size more wait, beyond
that the answer is 429 with Retry-After. Sampling defaults are `tandem generate`'s
(temperature 0, seed 0), so the same options give the same text. SIGINT/SIGTERM shut down
gracefully.
"""

from __future__ import annotations

from ..checkpoints import add_model_arguments, backend_options
from ..serving import ServeConfig
from .options import add_dataclass_options, dataclass_from_args

NAME = "serve"
HELP = "serve a model over HTTP (OpenAI-style /v1/completions, streaming, /health)"


def add_arguments(p) -> None:
    add_model_arguments(p)
    add_dataclass_options(p, ServeConfig, "server options")


def run(args) -> int:
    from ..serving import load_service, serve  # the web stack loads only for this command

    config = dataclass_from_args(ServeConfig, args)
    serve(load_service(config, args.model, args.tokenizer, args.backend, backend_options(args)))
    return 0
