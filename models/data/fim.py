"""Fill-in-the-middle (FIM): the document transform, its token orders, infill prompts, and the
embedding resize that gives an existing model room for the sentinels.

The transform works on characters, before tokenisation (Bavarian et al., 2022). For one
document, with a seeded `numpy.random.Generator`, it draws in this order:

1. u = rng.random(); the document stays plain (left-to-right) unless u < rate;
2. two cut points, each uniform over 0..len(doc) (characters, both ends included), sorted:
   prefix = doc[:a], middle = doc[a:b], suffix = doc[b:] (any of them may be empty);
3. v = rng.random(); SPM order if v < spm_rate, else PSM.

Token orders (each piece tokenised on its own; <pre> <mid> <suf> <eom> are the sentinels of
models.tokenizer, <eom> the end of the middle):

    PSM:  <pre> prefix <suf> suffix <mid> middle <eom>
    SPM:  <pre> <suf> suffix <mid> prefix middle <eom>

SPM is the variant of the paper's appendix that puts the prefix right before the middle, so
an infill prompt in either order ends where the middle starts. An infill prompt is the order
up to and including <mid>; the model writes the middle and closes it with <eom>.

Document-level or context-level FIM. With `max_chars` 0 the transform cuts whole documents
(files), as above. A model trained on windows much shorter than its documents then almost
never sees <pre> prefix <suf> suffix <mid> middle in one window: the stdlib's files average
~5,200 tokens, so at 128 or 256-token windows the prefix that a middle continues lies
thousands of tokens back, and no window holds a whole example. The paper also describes
context-level FIM, which transforms context-sized fragments instead, and reports better
infilling with it. Its form here: with `max_chars` > 0, each document is first cut at line
ends into consecutive pieces of at most `max_chars` characters (`fim_pieces`; a longer line
is cut inside), and every piece is drawn and transformed on its own, in order. Consecutive
plain pieces are tokenised together, so at rate 0 the stream is the document-level one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ModelConfigError, PromptError
from ..tokenizer import FIMTokens, Tokenizer, load_tokenizer
from .dataset import TokenData

__all__ = [
    "FIMConfig",
    "FIMExample",
    "ensure_fim",
    "fim_pieces",
    "fim_token_ids",
    "fim_token_stream",
    "fim_train_data",
    "fim_transform",
    "infill_prompt_ids",
    "resize_token_embeddings",
]

MODES = ("psm", "spm")


def _rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value) or not 0 <= value <= 1:
        raise ModelConfigError(f"{name} must be a number in [0, 1], not {value!r}")
    return float(value)


@dataclass(frozen=True)
class FIMConfig:
    rate: float = 0.5  # share of documents (or pieces) transformed (the rest stay left-to-right)
    spm_rate: float = 0.5  # share of the transformed documents in SPM order (the rest PSM)
    max_chars: int = 0  # context-level FIM: pieces of at most this many characters; 0: documents

    def __post_init__(self) -> None:
        _rate("FIM rate", self.rate)
        _rate("FIM SPM rate", self.spm_rate)
        if isinstance(self.max_chars, bool) or not isinstance(self.max_chars, numbers.Integral) \
                or self.max_chars < 0:
            raise ModelConfigError(
                f"FIM max_chars must be an integer >= 0, not {self.max_chars!r}")


@dataclass(frozen=True)
class FIMExample:
    """A document cut into prefix + middle + suffix (== the document), and its order."""

    prefix: str
    middle: str
    suffix: str
    mode: str  # "psm" or "spm"

    @property
    def document(self) -> str:
        return self.prefix + self.middle + self.suffix


def fim_pieces(doc: str, max_chars: int) -> list[str]:
    """`doc` cut into consecutive pieces of at most `max_chars` characters, each ending at a
    line end where it can (a line longer than `max_chars` is cut inside); "".join(pieces) is
    `doc`. A document that fits (the empty one too) is one piece."""
    if max_chars < 1:
        raise ModelConfigError(f"max_chars must be at least 1, not {max_chars}")
    if len(doc) <= max_chars:
        return [doc]
    pieces: list[str] = []
    current = ""
    for line in doc.splitlines(keepends=True):
        if current and len(current) + len(line) > max_chars:
            pieces.append(current)
            current = ""
        while len(line) > max_chars:
            pieces.append(line[:max_chars])
            line = line[max_chars:]
        current += line
        if len(current) == max_chars:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def fim_transform(doc: str, rng: np.random.Generator, config: FIMConfig = FIMConfig()
                  ) -> FIMExample | None:
    """The document cut for FIM, or None when it stays plain (draw order: module docstring)."""
    if rng.random() >= config.rate:
        return None
    a, b = sorted(int(i) for i in rng.integers(0, len(doc) + 1, size=2))
    mode = "spm" if rng.random() < config.spm_rate else "psm"
    return FIMExample(doc[:a], doc[a:b], doc[b:], mode)


def _sentinels(tokenizer: Tokenizer) -> FIMTokens:
    fim = tokenizer.fim_tokens()
    if fim is None:
        raise PromptError(
            f"tokenizer {tokenizer.name!r} has no FIM sentinels; this model was not trained "
            "for fill-in-the-middle")
    return fim


def fim_token_ids(example: FIMExample, tokenizer: Tokenizer) -> list[int]:
    """The training sequence of a cut document (PSM or SPM, ending with <eom>)."""
    fim = _sentinels(tokenizer)
    enc = tokenizer.encode
    if example.mode == "psm":
        return [fim.prefix, *enc(example.prefix), fim.suffix, *enc(example.suffix),
                fim.middle, *enc(example.middle), fim.end]
    if example.mode == "spm":
        return [fim.prefix, fim.suffix, *enc(example.suffix), fim.middle,
                *enc(example.prefix), *enc(example.middle), fim.end]
    raise ModelConfigError(f"FIM mode must be one of {MODES}, not {example.mode!r}")


def infill_prompt_ids(tokenizer: Tokenizer, prefix: str, suffix: str, mode: str = "psm"
                      ) -> list[int]:
    """The prompt that asks for the middle between `prefix` and `suffix`: the mode's order up
    to <mid> (PSM: <pre> prefix <suf> suffix <mid>). Generation continues with the middle and
    should stop at `tokenizer.fim_tokens().end`. Works for any backend: it is only tokens."""
    fim = _sentinels(tokenizer)
    if mode == "psm":
        return [fim.prefix, *tokenizer.encode(prefix), fim.suffix, *tokenizer.encode(suffix),
                fim.middle]
    if mode == "spm":
        return [fim.prefix, fim.suffix, *tokenizer.encode(suffix), fim.middle,
                *tokenizer.encode(prefix)]
    raise ModelConfigError(f"FIM mode must be one of {MODES}, not {mode!r}")


def fim_token_stream(documents: Iterable[str], tokenizer: Tokenizer, config: FIMConfig,
                     seed: int, eot_id: int) -> np.ndarray:
    """Token stream of documents, each FIM-transformed with probability `config.rate` (with
    `config.max_chars`, each of its pieces) and followed by `eot_id`, as `prepare_corpus` lays
    out a split; reproducible for a seed."""
    rng = np.random.default_rng(seed)
    ids: list[int] = []
    for doc in documents:
        pieces = fim_pieces(doc, config.max_chars) if config.max_chars else [doc]
        plain = ""  # consecutive plain pieces, tokenised together
        for piece in pieces:
            example = fim_transform(piece, rng, config)
            if example is None:
                plain += piece
                continue
            if plain:
                ids.extend(tokenizer.encode(plain))
                plain = ""
            ids.extend(fim_token_ids(example, tokenizer))
        if plain:
            ids.extend(tokenizer.encode(plain))
        ids.append(eot_id)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    return np.asarray(ids, dtype=dtype)


def fim_train_data(data: TokenData, config: FIMConfig, seed: int) -> tuple[TokenData, Tokenizer]:
    """`data` with its train split FIM-transformed, and the tokenizer with the sentinels.

    The prepared corpus holds tokens, so each training document (the tokens between two EOTs
    of train.bin) is decoded back to its characters (byte-level BPE round-trips exactly),
    transformed by `fim_token_stream` and tokenised again with the sentinels added. The
    transform is drawn once for the run from `seed` (so a resumed run sees the same stream);
    the validation split stays left-to-right. The result lives in memory; the corpus
    directory is not touched."""
    base = load_tokenizer(data.directory)
    if base is None:
        raise ModelConfigError(f"{data.directory} has no tokenizer.json to add FIM sentinels to")
    tok = base.with_fim()
    train = np.asarray(data.splits["train"])  # (N,) uint16, each document followed by EOT
    eot = data.meta.eot_id
    ends = np.flatnonzero(train == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    docs = (tok.decode(train[a:b].tolist()) for a, b in zip(starts, ends, strict=True))
    stream = fim_token_stream(docs, tok, config, seed, eot)
    out = copy.copy(data)
    out.splits = {**data.splits, "train": stream}
    out.meta = dataclasses.replace(data.meta, vocab_size=tok.vocab_size,
                                   tokens={**data.meta.tokens, "train": len(stream)})
    return out, tok


@torch.no_grad()
def resize_token_embeddings(model: nn.Module, vocab_size: int) -> None:
    """Grow a GPT2LMHead / MoEGPT's vocabulary to `vocab_size` in place (for sentinels added
    after training): new embedding rows (and untied head rows) are the mean of the existing
    ones, existing rows are untouched, a tied head stays tied, config.vocab_size follows."""
    old = model.transformer.wte.weight  # (V, C)
    V, C = old.shape
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < V:
        raise ModelConfigError(
            f"vocab_size must be an integer >= the model's {V}, not {vocab_size!r}")
    if vocab_size == V:
        return
    tied = model.lm_head.weight is old
    wte = nn.Embedding(vocab_size, C, device=old.device, dtype=old.dtype)
    wte.weight[:V] = old
    wte.weight[V:] = old.mean(dim=0)
    model.transformer.wte = wte
    head = nn.Linear(C, vocab_size, bias=False, device=old.device, dtype=old.dtype)
    if tied:
        head.weight = wte.weight
    else:
        head.weight[:V] = model.lm_head.weight
        head.weight[V:] = model.lm_head.weight.mean(dim=0)
    model.lm_head = head
    model.config.vocab_size = vocab_size


def ensure_fim(model: nn.Module, tokenizer: Tokenizer) -> Tokenizer:
    """The resize-on-load step: `tokenizer` with the FIM sentinels, and `model`'s embeddings
    grown (in place) to cover them if they do not yet."""
    tok = tokenizer.with_fim()
    if model.config.vocab_size < tok.vocab_size:
        resize_token_embeddings(model, tok.vocab_size)
    return tok
