"""The standard-library corpus: file list, hash split, BPE training, token binaries."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from ..errors import ModelConfigError

__all__ = ["EOT", "CorpusMeta", "prepare_corpus", "split_of", "stdlib_files", "stdlib_root"]

#: Separates files in the token stream; GPT-2's name for it.
EOT = "<|endoftext|>"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class CorpusMeta:
    python: str  # interpreter version whose stdlib was read
    root: str  # where the files came from
    vocab_size: int  # size of the trained BPE vocabulary
    val_fraction: float  # requested share of files in the validation split
    files: dict[str, int]  # split -> file count
    bytes: dict[str, int]  # split -> UTF-8 bytes of source
    tokens: dict[str, int]  # split -> tokens in the binary (EOT included)
    file_list_sha256: str  # identifies the exact file set
    eot_id: int  # id of EOT

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> CorpusMeta:
        return cls(**json.loads(path.read_text()))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None, limit: int | None = None) -> list[tuple[str, str]]:
    """(relative path, source) of every UTF-8 `.py` file under `root` (the first `limit` of
    them), sorted by path."""
    root = stdlib_root() if root is None else root
    out: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        if limit is not None and len(out) >= limit:
            break
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts):
            continue
        try:
            out.append((rel.as_posix(), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue  # a handful of test files are deliberately not UTF-8
    return out


def split_of(relpath: str, val_fraction: float) -> str:
    """'val' or 'train', decided by the path's SHA-256 alone, so it never depends on order."""
    digest = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big")
    return "val" if digest / 2**64 < val_fraction else "train"


def _train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def prepare_corpus(
    out: str | Path,
    vocab_size: int = 4096,
    val_fraction: float = 0.05,
    root: Path | None = None,
    limit_files: int | None = None,
    progress: bool = True,
) -> CorpusMeta:
    """Write tokenizer.json, train.bin, val.bin and meta.json into `out`.

    `limit_files` keeps the first N files (by path), for quick experiments and tests.
    """
    if not 256 + 1 < vocab_size <= 65535:
        raise ModelConfigError(
            f"vocab_size must be in 258..65535 for uint16 tokens, not {vocab_size}"
        )
    if not 0 < val_fraction < 1:
        raise ModelConfigError(f"val_fraction must be in (0, 1), not {val_fraction}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = stdlib_files(root, limit_files)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for rel, text in files:
        splits[split_of(rel, val_fraction)].append((rel, text))
    if not splits["train"] or not splits["val"]:
        raise ModelConfigError(f"{len(files)} files give an empty split; use more files")

    tok = _train_bpe([text for _, text in splits["train"]], vocab_size)
    tok.save(str(out / "tokenizer.json"))
    eot = tok.token_to_id(EOT)

    tokens = {}
    for split, items in splits.items():
        ids: list[int] = []
        for _, text in tqdm(items, desc=f"tokenizing {split}", unit="file", disable=not progress):
            ids.extend(tok.encode(text).ids)
            ids.append(eot)
        np.asarray(ids, dtype=np.uint16).tofile(out / f"{split}.bin")
        tokens[split] = len(ids)

    listing = "\n".join(rel for rel, _ in files).encode()
    meta = CorpusMeta(
        python=platform.python_version(),
        root=str(stdlib_root() if root is None else root),
        vocab_size=tok.get_vocab_size(),
        val_fraction=val_fraction,
        files={s: len(v) for s, v in splits.items()},
        bytes={s: sum(len(t.encode()) for _, t in v) for s, v in splits.items()},
        tokens=tokens,
        file_list_sha256=hashlib.sha256(listing).hexdigest(),
        eot_id=eot,
    )
    meta.save(out / "meta.json")
    return meta
