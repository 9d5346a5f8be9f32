"""`Service`: a loaded model behind its engine, and the checks a request passes before it
is queued (served model name, prompt tokenization, context and vocabulary)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from torch import nn

import models
from models import PromptError, Tokenizer
from models.data.fim import infill_prompt_ids

from ..checkpoints import check_tokenizer_fits, require_backend, resolve_tokenizer
from ..errors import UsageError
from ..runtime import make_backend
from .config import ServeConfig
from .engine import Engine
from .schemas import ApiError, CompletionRequest, Prompt

__all__ = ["Service", "load_service"]


@dataclass
class Service:
    """What the HTTP layer serves: one model under one name, through one engine."""

    model: nn.Module  # for its config and check_prompt only; the engine's backend runs it
    tokenizer: Tokenizer
    engine: Engine
    model_name: str  # the `model` clients send
    config: ServeConfig
    _facts: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def n_positions(self) -> int:
        return self.model.config.n_positions

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def backend_facts(self) -> dict[str, Any]:
        """The backend's `describe()`, as clients see it (in /health and every completion).
        A value that is a file system path is given by its last component: clients learn no
        server paths."""
        if self._facts is None:
            self._facts = _no_paths(self.engine.backend.describe())
        return dict(self._facts)

    def facts(self) -> dict[str, Any]:
        """The model and backend, as /health and /v1/models report them."""
        return {"model": self.model_name, **self.backend_facts(),
                "n_positions": self.n_positions, "vocab_size": self.vocab_size,
                **_no_paths({"tokenizer": self.tokenizer.name})}

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise ApiError(404, f"model {name!r} is not served here; send \"model\": "
                           f"{self.model_name!r} or leave it out (see GET /v1/models)",
                           param="model", code="model_not_found")

    @cached_property
    def max_prompt_chars(self) -> int:
        """A prompt text longer than this cannot fit the context whatever it says: no token
        of the vocabulary spells more than the longest one (twice that, for normalizers)."""
        longest = max((len(t) for t in self.tokenizer.backend.get_vocab()), default=1)
        return 2 * max(longest, 1) * self.n_positions

    def check_prompt_size(self, prompt: Prompt, request: CompletionRequest) -> None:
        """Refuse, without tokenizing, a prompt too long for the context (cheap: run it on
        the event loop before the tokenizer is given any work)."""
        n_ctx, n_new = self.n_positions, request.max_tokens
        if isinstance(prompt, str) and len(prompt) > self.max_prompt_chars:
            raise ApiError(400, f"the prompt ({len(prompt)} characters) cannot fit the model's "
                           f"context of {n_ctx} tokens; shorten it", param="prompt",
                           code="context_length_exceeded")
        if not isinstance(prompt, str):
            self._check_context(len(prompt), n_new)
        if request.suffix is not None:
            if not isinstance(prompt, str):
                raise ApiError(400, "suffix needs a text prompt (the text before the middle), "
                               "not token ids", param="suffix", code="invalid_value")
            if self.tokenizer.fim_tokens() is None:
                raise ApiError(400, "suffix needs a model trained for fill-in-the-middle; this "
                               "model's tokenizer has no FIM sentinels", param="suffix",
                               code="unsupported_value")
            if len(prompt) + len(request.suffix) > self.max_prompt_chars:
                raise ApiError(400, f"the prompt and suffix ({len(prompt)} + "
                               f"{len(request.suffix)} characters) cannot fit the model's "
                               f"context of {n_ctx} tokens; shorten them", param="suffix",
                               code="context_length_exceeded")

    def _check_context(self, n_prompt: int, n_new: int) -> None:
        n_ctx = self.n_positions
        if n_prompt + n_new > n_ctx:
            fix = (f"lower max_tokens to {n_ctx - n_prompt} or shorten the prompt"
                   if n_prompt < n_ctx else f"shorten the prompt below {n_ctx} tokens")
            raise ApiError(400, f"prompt ({n_prompt} tokens) + max_tokens ({n_new}) exceeds the "
                           f"model's context of {n_ctx} tokens; {fix}", param="max_tokens",
                           code="context_length_exceeded")

    def prompt_ids(self, prompt: Prompt, request: CompletionRequest) -> list[int]:
        """`prompt` as token ids; ApiError(400) if it cannot be generated from. Tokenizes:
        call it off the event loop, after `check_prompt_size`."""
        self.check_prompt_size(prompt, request)
        if request.suffix is not None:  # PSM: <pre> prompt <suf> suffix <mid>
            ids = infill_prompt_ids(self.tokenizer, prompt, request.suffix)
        else:
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        n_new = request.max_tokens
        if not ids:
            raise ApiError(400, "field 'prompt' is empty; give at least one token of prompt",
                           param="prompt", code="empty_prompt")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ApiError(400, f"field 'prompt': token id {bad[0]} is outside the vocabulary "
                           f"(0..{self.vocab_size - 1})", param="prompt", code="invalid_value")
        self._check_context(len(ids), n_new)
        backend = self.engine.backend
        if getattr(backend, "greedy_only", False) and request.temperature:
            raise ApiError(400, f"the {backend.name} backend decodes greedily (argmax on the "
                           "devices); send \"temperature\": 0", param="temperature",
                           code="unsupported_value")
        try:  # the model's own rules, should it have more than the above
            self.model.check_prompt(ids, n_new)
        except PromptError as e:
            raise ApiError(400, str(e), param="prompt", code="invalid_prompt") from None
        return ids


def _no_paths(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: Path(v).name if isinstance(v, str) and os.path.isabs(v) else v
            for k, v in facts.items()}


def load_service(config: ServeConfig, model_dir: str | Path, tokenizer: str = "auto",
                 backend: str = "torch", backend_options: dict | None = None) -> Service:
    """Load the checkpoint and tokenizer, build the backend and an engine (not yet started).

    Raises UsageError/ModelError (one line each) for a bad backend, checkpoint or tokenizer.
    """
    require_backend(backend)  # before the (slow) model load
    model = models.load_model(model_dir)  # first: a bad checkpoint is the error to report
    tok = resolve_tokenizer(model_dir, tokenizer)
    if tok is None:
        raise UsageError(f"{model_dir} ships no tokenizer, and serving needs one to turn text "
                         "into tokens and back; pass --tokenizer gpt2 or a directory")
    check_tokenizer_fits(tok, model)
    engine = Engine(make_backend(backend, model, **(backend_options or {})), tok,
                    config.queue_size)
    name = config.model_name or Path(model_dir).resolve().name
    return Service(model, tok, engine, name, config)
