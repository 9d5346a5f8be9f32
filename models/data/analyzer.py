"""The offline data analyzer: per-sample difficulty of a prepared corpus, as numpy memmaps.

What a sample is. The trainer (`TokenData.batch`) draws windows of `block_size + 1` tokens
(x and its next-token targets y) at random offsets of a split's token stream. The analyzer
indexes the aligned windows: sample i of a split is tokens [i * B, i * B + B + 1) for
i in 0 .. N - 1, N = (tokens - 1) // B, B = block_size. The curriculum sampler
(models.data.curriculum) draws these windows, so an index is only valid for its block size.

Metrics, one value per sample, over the window's B input tokens x:

- `seqlen`: the sequence length that the window holds, for data made of documents (files
  joined by <|endoftext|>): the longest run of x's tokens that belongs to one document
  (an <|endoftext|> ends its document's run). A window inside one long file has B; a window
  over many short files, less. 1 <= seqlen <= B.
- `vocab_rarity`: sum over x's tokens of -log p(token), where p is the token's unigram
  frequency in the train split (a token the train split lacks counts once, as DeepSpeed's
  analyzer does). Natural log, float64.

Files, beside the data in `DIR/analysis_b{B}/`:

    analysis.json                      block size, samples per split, metrics, corpus identity
    unigram_counts.npy                 (vocab,) int64 token counts of the train split
    {split}_{metric}.npy               (N,) the metric of each sample (memmap with np.load)
    {split}_{metric}_order.npy         (N,) sample indices sorted by the metric (stable)
    {split}_{metric}_percentiles.npy   (101,) the metric's value at percentiles 0..100
                                       (numpy's 'lower' method: each is a real sample's value)

Percentile difficulty p (DeepSpeed's meaning) admits the first (N // 100) * p entries of the
order; a value difficulty v admits the samples whose metric is <= v, and the percentile table
says which v admits about p% of the data.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import ModelConfigError, ModelError
from .corpus import CorpusMeta

__all__ = ["ANALYSIS_METRICS", "DifficultyIndex", "analyze", "index_dir"]

ANALYSIS_METRICS = ("seqlen", "vocab_rarity")
_SPLITS = ("train", "val")
_CHUNK = 1 << 14  # windows per progress-bar update


def index_dir(data_dir: str | Path, block_size: int) -> Path:
    return Path(data_dir) / f"analysis_b{block_size}"


@dataclass
class AnalysisMeta:
    block_size: int
    samples: dict[str, int]  # split -> N
    metrics: list[str]
    vocab_size: int
    eot_id: int
    tokens: dict[str, int]  # split -> tokens of the stream the index was made from
    file_list_sha256: str  # the corpus it was made from


def _seqlen(x: np.ndarray, eot: int) -> np.ndarray:
    """x (n, B) tokens -> (n,) the longest run belonging to one document (EOT ends a run)."""
    n, B = x.shape
    # run[t] = tokens of the current document seen up to and including t
    run = np.zeros((n, B), dtype=np.int32)
    count = np.zeros(n, dtype=np.int32)
    for t in range(B):
        count += 1
        run[:, t] = count
        count[x[:, t] == eot] = 0  # the EOT closes its document; the next token starts anew
    return run.max(axis=1)


def _windows(stream: np.ndarray, start: int, stop: int, B: int) -> np.ndarray:
    """Samples start..stop-1 of a stream: (stop - start, B) int64 input tokens."""
    return stream[start * B: stop * B].astype(np.int64).reshape(stop - start, B)


def analyze(data_dir: str | Path, block_size: int = 256, force: bool = False,
            progress: bool = True) -> Path:
    """Write the difficulty index of a prepared corpus; returns its directory.

    Refuses to replace an existing index unless `force`; writes into a temporary directory
    first, so an interrupted run leaves the old index (or none), never half of one.
    """
    data_dir = Path(data_dir)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ModelConfigError(f"block_size must be a positive integer, not {block_size!r}")
    if not (data_dir / "meta.json").is_file():
        raise ModelError(f"{data_dir} is not a prepared corpus (no meta.json); "
                         "create it with `tandem data --out DIR`")
    meta = CorpusMeta.load(data_dir / "meta.json")
    out = index_dir(data_dir, block_size)
    if out.exists() and not force:
        raise ModelError(f"{out} already exists; pass --force to rebuild it")
    streams = {s: np.memmap(data_dir / f"{s}.bin", dtype=np.uint16, mode="r") for s in _SPLITS}
    n = {s: max(0, (len(v) - 1) // block_size) for s, v in streams.items()}
    if n["train"] == 0:
        raise ModelError(f"the train split has {len(streams['train'])} tokens, fewer than "
                         f"block_size + 1 ({block_size + 1}); use a smaller block size")

    tmp = data_dir / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        counts = np.bincount(np.asarray(streams["train"]), minlength=meta.vocab_size)
        counts = counts.astype(np.int64)
        np.save(tmp / "unigram_counts.npy", counts)
        rarity = -np.log(np.maximum(counts, 1) / counts.sum())  # (vocab,) nats per token
        bar = tqdm(total=sum(n.values()), desc="analyzing", unit="window", disable=not progress)
        for split in _SPLITS:
            N = n[split]
            seqlen = np.lib.format.open_memmap(tmp / f"{split}_seqlen.npy", mode="w+",
                                               dtype=np.int32, shape=(N,))
            voc = np.lib.format.open_memmap(tmp / f"{split}_vocab_rarity.npy", mode="w+",
                                            dtype=np.float64, shape=(N,))
            for start in range(0, N, _CHUNK):
                stop = min(N, start + _CHUNK)
                x = _windows(streams[split], start, stop, block_size)  # (n, B)
                seqlen[start:stop] = _seqlen(x, meta.eot_id)
                voc[start:stop] = rarity[x].sum(axis=1)
                bar.update(stop - start)
            for name, values in (("seqlen", seqlen), ("vocab_rarity", voc)):
                values.flush()
                order = np.argsort(values, kind="stable")
                np.save(tmp / f"{split}_{name}_order.npy", order.astype(np.int64))
                table = np.percentile(values, np.arange(101), method="lower") if N else \
                    np.full(101, np.nan)
                np.save(tmp / f"{split}_{name}_percentiles.npy", table)
            del seqlen, voc
        bar.close()
        info = AnalysisMeta(block_size=block_size, samples=n, metrics=list(ANALYSIS_METRICS),
                            vocab_size=meta.vocab_size, eot_id=meta.eot_id,
                            tokens={s: len(v) for s, v in streams.items()},
                            file_list_sha256=meta.file_list_sha256)
        (tmp / "analysis.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
        if out.exists():
            old = data_dir / f".{out.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class DifficultyIndex:
    """A split's analyzer index, memory-mapped, with the windows it describes."""

    def __init__(self, data_dir: str | Path, block_size: int, split: str = "train") -> None:
        self.data_dir = Path(data_dir)
        self.directory = index_dir(data_dir, block_size)
        if not (self.directory / "analysis.json").is_file():
            raise ModelError(f"{self.directory} holds no analysis; run "
                             f"`tandem data analyze --data {self.data_dir} "
                             f"--block-size {block_size}`")
        if split not in _SPLITS:
            raise ModelConfigError(f"split must be 'train' or 'val', not {split!r}")
        self.meta = AnalysisMeta(**json.loads((self.directory / "analysis.json").read_text()))
        corpus = CorpusMeta.load(self.data_dir / "meta.json")
        self.stream = np.memmap(self.data_dir / f"{split}.bin", dtype=np.uint16, mode="r")
        if corpus.file_list_sha256 != self.meta.file_list_sha256 or \
                len(self.stream) != self.meta.tokens[split]:
            raise ModelError(f"{self.directory} was made from another corpus; rebuild it with "
                             "`tandem data analyze --force`")
        self.split = split
        self.block_size = block_size
        self.n_samples = self.meta.samples[split]
        self.metrics = tuple(self.meta.metrics)

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.directory / f"{self.split}_{name}.npy", mmap_mode="r")

    def values(self, metric: str) -> np.ndarray:
        return self._load(metric)

    def order(self, metric: str) -> np.ndarray:
        return self._load(f"{metric}_order")

    def percentiles(self, metric: str) -> np.ndarray:
        return self._load(f"{metric}_percentiles")

    def windows(self, samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (len(samples), B) int64 of the given sample indices; y is x shifted by one."""
        B = self.block_size
        rows = np.stack([self.stream[i * B: i * B + B + 1] for i in np.asarray(samples)])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]
