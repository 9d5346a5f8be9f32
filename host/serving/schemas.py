"""The wire format of `/v1/completions`: OpenAI's request, response, stream-chunk and error
shapes, plus Tandem's own figures under the `tandem` key of each choice/chunk.

Sampling defaults follow `tandem generate`, not OpenAI: `temperature` 0 (greedy) and `seed`
0, so a request without them is reproducible and equals the CLI's output. OpenAI fields that
Tandem does not implement are accepted only at their neutral value (`n` 1, `top_p` 1,
`echo` false, ...), so a client sending defaults works and one relying on them is told.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

__all__ = [
    "ApiError",
    "CompletionRequest",
    "StreamOptions",
    "completion_choice",
    "completion_chunk",
    "completion_response",
    "error_body",
    "parse_completion_request",
]

#: Largest seed accepted (torch.Generator.manual_seed takes 64-bit values; keep it signed-safe).
MAX_SEED = 2**63 - 1
MAX_STOP_STRINGS = 4
#: Smallest non-zero temperature: logits divided by less overflow FP32 and sampling breaks.
MIN_TEMPERATURE = 1e-3
#: Most prompts one request may carry (each one is a job in the queue, and a choice).
MAX_PROMPTS = 16

Prompt = str | list[int]


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        if self.status == 429:
            return "rate_limit_error"
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False  # a last chunk with `usage` and no choices


def _neutral(name: str, value: Any, neutral: tuple[Any, ...], fix: str) -> Any:
    if value not in neutral:  # strict mode has already refused ill-typed values
        raise ValueError(f"{name}={value!r} is not supported by Tandem; {fix}")
    return value


class CompletionRequest(BaseModel):
    """POST /v1/completions body. Unknown fields are refused, by name."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    model: str | None = None  # must name the served model when given
    # text or token ids, or a list of them (one choice per prompt, in order)
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(default=16)  # tokens to generate (null: 16)
    temperature: float | None = 0.0  # 0 is greedy; Tandem's default (OpenAI's is 1)
    top_k: int | None = None  # sample among the k most likely
    seed: int | None = 0  # sampling seed; Tandem's default 0 makes sampling reproducible
    stream: bool = False  # Server-Sent Events, one chunk per token
    stop: str | list[str] | None = None  # up to 4 strings; the text ends before the first
    stream_options: StreamOptions | None = None
    # fill-in-the-middle: the text after the completion; the prompt is the text before it,
    # the model (FIM-trained) writes the middle (models.data.fim.infill_prompt_ids)
    suffix: str | None = None
    # OpenAI fields accepted only at their neutral value:
    n: int | None = 1
    best_of: int | None = 1
    echo: bool | None = False
    logprobs: int | None = None
    top_p: float | None = 1.0
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # accepted and ignored

    @field_validator("prompt", mode="plain",
                     json_schema_input_type=str | list[int] | list[str] | list[list[int]])
    @classmethod
    def _prompt(cls, value: Any) -> str | list[int] | list[str] | list[list[int]]:
        def ids(v: Any) -> bool:
            return isinstance(v, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in v)

        if isinstance(value, str) or ids(value):
            return value
        if isinstance(value, list) and all(isinstance(p, str) or ids(p) for p in value) and (
                all(isinstance(p, str) for p in value) or all(ids(p) for p in value)):
            if len(value) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request, not {len(value)}")
            return value
        raise ValueError("must be a string or a list of integer token ids, or a list of those "
                         "(all strings or all token-id lists)")

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, value: int | None) -> int:
        value = 16 if value is None else value
        if value < 1:
            raise ValueError(f"must be at least 1, not {value}")
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float:
        value = 0.0 if value is None else float(value)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"must be a number >= 0 (0 is greedy), not {value}")
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE} (smaller ones "
                             f"overflow the logits), not {value}")
        return value

    def prompts(self) -> list[Prompt]:
        """The prompts, one per choice: a single prompt is a list of one."""
        p = self.prompt
        if isinstance(p, str) or not p or isinstance(p[0], int):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be at least 1 (or null for all tokens), not {value}")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int:
        value = 0 if value is None else value
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"must be in 0..{MAX_SEED}, not {value}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [] if value is None else [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, not {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("n", "best_of")
    @classmethod
    def _one(cls, value: int | None, info: ValidationInfo) -> int | None:
        return _neutral(info.field_name, value, (1, None), "send one request per completion")

    @field_validator("echo")
    @classmethod
    def _echo(cls, value: bool | None) -> bool | None:
        return _neutral("echo", value, (False, None), "prepend the prompt yourself")

    @field_validator("logprobs", "logit_bias")
    @classmethod
    def _none(cls, value: Any, info: ValidationInfo) -> Any:
        if value in (None, {}):
            return value
        raise ValueError(f"{info.field_name} is not supported by Tandem; leave it out")

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value: float | None) -> float | None:
        return _neutral("top_p", value, (1.0, None), "use top_k to restrict sampling")

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalty(cls, value: float | None, info: ValidationInfo) -> float | None:
        return _neutral(info.field_name, value, (0.0, None), "leave it out")


def _field_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """One line for the first pydantic error, and the top-level field it concerns."""
    loc = [str(part) for part in error["loc"]]
    field = loc[0] if loc else None
    where = ".".join(loc)
    kind, msg = error["type"], error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        nested = len(loc) > 1 and field == "stream_options"
        known = ", ".join((StreamOptions if nested else CompletionRequest).model_fields)
        owner = "stream_options" if nested else "/v1/completions"
        return f"unknown field {where!r}; {owner} takes: {known}", field
    if kind == "missing":
        return f"field {where!r} is required", field
    if kind == "value_error":
        return f"field {where!r}: {msg}", field
    return f"field {where!r}: {msg}, not {error.get('input')!r}", field


def parse_completion_request(data: Any) -> CompletionRequest:
    """Validate a decoded JSON body; raise ApiError(400) naming the first bad field."""
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(data).__name__}",
                       code="invalid_body")
    try:
        return CompletionRequest.model_validate(data)
    except ValidationError as e:
        message, field = _field_message(e.errors()[0])
        raise ApiError(400, message, param=field, code="invalid_value") from None


def completion_choice(*, index: int, text: str, finish_reason: str,
                      tandem: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None,
            "tandem": tandem}


def completion_response(*, id_: str, created: int, model: str, choices: list[dict[str, Any]],
                        prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The non-streaming body: one choice per prompt, OpenAI's usage block (all choices)."""
    return {
        "id": id_,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def completion_chunk(*, id_: str, created: int, model: str, text: str | None,
                     finish_reason: str | None, tandem: dict[str, Any] | None = None,
                     usage: dict[str, int] | None = None, index: int = 0) -> dict[str, Any]:
    """One Server-Sent Event's data; `text=None` makes the usage-only chunk (no choices)."""
    chunk: dict[str, Any] = {"id": id_, "object": "text_completion", "created": created,
                             "model": model, "choices": []}
    if text is not None:
        choice = {"index": index, "text": text, "finish_reason": finish_reason,
                  "logprobs": None}
        if tandem is not None:
            choice["tandem"] = tandem
        chunk["choices"].append(choice)
    if usage is not None:
        chunk["usage"] = usage
    return chunk
