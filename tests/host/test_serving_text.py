"""Serving without a server: completion text with stop strings, request validation, config."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, pre_tokenizers, trainers
from tokenizers import models as tok_models

from host.errors import UsageError
from host.serving import ApiError, CompletionText, ServeConfig, parse_completion_request
from models import Tokenizer

CORPUS = ["def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1)\n",
          "import sys\nfor line in sys.stdin:\n    print(line.strip())  # café ☕\n"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A byte-level BPE with a few merges: any text encodes, multi-byte characters split."""
    hf = HFTokenizer(tok_models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return Tokenizer(hf, "tiny-test")


def _run(tokenizer, tokens, stop):
    text = CompletionText(tokenizer, stop)
    pieces, used = [], 0
    for t in tokens:
        pieces.append(text.push(t))
        used += 1
        if text.stopped:
            break
    pieces.append(text.finish())
    return pieces, used, text


def test_pieces_join_to_decode_without_stop(tokenizer):
    ids = tokenizer.encode("naïve — 日本語 ☕ done")
    assert len(ids) > len("naïve — 日本語 ☕ done")  # characters really are split across tokens
    pieces, used, text = _run(tokenizer, ids, ())
    assert "".join(pieces) == tokenizer.decode(ids) == "naïve — 日本語 ☕ done"
    assert used == len(ids)
    assert not text.stopped
    assert all("\ufffd" not in p for p in pieces)  # never half a character


def test_stop_string_across_tokens_is_cut_and_never_leaked(tokenizer):
    ids = tokenizer.encode("x = fibonacci(3)\nreturn x")
    pieces, used, text = _run(tokenizer, ids, ["(3)\n"])
    assert "".join(pieces) == "x = fibonacci"
    assert text.stopped
    assert used < len(ids)
    assert not any("(" in p for p in pieces)  # held back, then dropped


def test_partial_stop_at_the_end_is_released(tokenizer):
    ids = tokenizer.encode("value = 1 # end")
    pieces, _, text = _run(tokenizer, ids, ["# end of", "zzz"])
    assert not text.stopped
    assert "".join(pieces) == "value = 1 # end"
    assert "".join(pieces[:-1]) == "value = 1 "  # "# end" waited for finish()


def test_earliest_of_several_stops_wins(tokenizer):
    ids = tokenizer.encode("a, b; c, d")
    pieces, _, _ = _run(tokenizer, ids, [",", ";"])
    assert "".join(pieces) == "a"


def test_random_tokens_and_stops_match_a_plain_reference(tokenizer):
    """Any token sequence (invalid UTF-8 included) and stop strings: the pieces join to the
    full decode cut before the first stop occurrence."""
    rng = random.Random(0)
    vocab = tokenizer.vocab_size
    stopped = broken = 0
    for _ in range(300):
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(1, 25))]
        full = tokenizer.decode(tokens)
        clean = full.replace("\ufffd", "")
        stops = []
        for _ in range(rng.randrange(0, 3)):
            if clean:
                i = rng.randrange(len(clean))
                stops.append(clean[i : i + rng.randrange(1, 4)])
        if rng.random() < 0.3:
            stops.append("never-in-the-text")
        stops = [s for s in stops if "\ufffd" not in s]
        hits = [full.find(s) for s in stops if s in full]
        want = full[: min(hits)] if hits else full
        pieces, _, text = _run(tokenizer, tokens, stops)
        assert "".join(pieces) == want, (tokens, stops)
        assert text.stopped == bool(hits)
        stopped += text.stopped
        broken += "\ufffd" in full
    assert stopped > 100
    assert broken > 100


def test_empty_stop_string_is_refused(tokenizer):
    with pytest.raises(ValueError, match="must not be empty"):
        CompletionText(tokenizer, [""])


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({}, "prompt", "field 'prompt' is required"),
    ({"prompt": 3}, "prompt", "string or a list of integer token ids"),
    ({"prompt": ["a", [1]]}, "prompt", "or a list of those"),
    ({"prompt": ["a"] * 17}, "prompt", "at most 16 prompts per request, not 17"),
    ({"prompt": [["a"]]}, "prompt", "or a list of those"),
    ({"prompt": [1, True]}, "prompt", "list of integer token ids"),
    ({"prompt": "x", "max_tokens": "8"}, "max_tokens", "valid integer"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", "at least 1"),
    ({"prompt": "x", "temperature": -0.5}, "temperature", ">= 0"),
    ({"prompt": "x", "temperature": 1e-300}, "temperature", "0 (greedy) or at least 0.001"),
    ({"prompt": "x", "temperature": 1e-50}, "temperature", "0 (greedy) or at least 0.001"),
    ({"prompt": "x", "top_k": 0}, "top_k", "at least 1"),
    ({"prompt": "x", "seed": -1}, "seed", "must be in 0.."),
    ({"prompt": "x", "stream": "yes"}, "stream", "valid boolean"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"prompt": "x", "n": 2}, "n", "send one request per completion"),
    ({"prompt": "x", "top_p": 0.9}, "top_p", "use top_k"),
    ({"prompt": "x", "logprobs": 5}, "logprobs", "not supported"),
    ({"prompt": "x", "echo": True}, "echo", "not supported"),
    ({"prompt": "x", "temprature": 1.0}, "temprature", "unknown field 'temprature'"),
    ({"prompt": "x", "stream_options": {"usage": True}}, "stream_options",
     "stream_options takes: include_usage"),
])
def test_bad_fields_are_named(body, param, fragment):
    with pytest.raises(ApiError) as info:
        parse_completion_request(body)
    assert info.value.status == 400
    assert info.value.param == param
    assert fragment in info.value.message
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_defaults_are_tandem_generate_defaults():
    req = parse_completion_request({"prompt": "x", "max_tokens": None, "seed": None})
    assert (req.max_tokens, req.temperature, req.top_k, req.seed, req.stop, req.stream) == (
        16, 0.0, None, 0, [], False)
    neutral = {"prompt": [1, 2], "n": 1, "best_of": 1, "echo": False, "top_p": 1,
               "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "user": "u",
               "logprobs": None, "suffix": None}
    assert parse_completion_request(neutral).prompt == [1, 2]


@pytest.mark.parametrize(("prompt", "prompts"), [
    ("x", ["x"]), ([1, 2], [[1, 2]]), ([], [[]]), (["a", "b"], ["a", "b"]), (["a"], ["a"]),
    ([[1], [2, 3]], [[1], [2, 3]])])
def test_a_list_of_prompts_is_one_choice_each(prompt, prompts):
    assert parse_completion_request({"prompt": prompt}).prompts() == prompts


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("port", 70000, "port must be an integer in 0..65535, not 70000"),
    ("queue_size", 0, "queue_size must be an integer >= 1, not 0"),
    ("request_timeout_s", 0.0, "request_timeout_s must be a positive number, not 0.0"),
    ("request_timeout_s", float("nan"), "request_timeout_s must be a positive number"),
    ("read_timeout_s", 0, "read_timeout_s must be a positive number, not 0"),
    ("host", "", "host must be an address"),
])
def test_serve_config_refuses_bad_values(field, value, fragment):
    with pytest.raises(UsageError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        ServeConfig(**{field: value})


def test_serve_config_round_trips_and_names_unknown_options():
    cfg = ServeConfig(port=0, queue_size=3)
    assert ServeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UsageError, match="unknown serve option 'queue'"):
        ServeConfig.from_dict({"queue": 3})
