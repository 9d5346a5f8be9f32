"""The stdlib corpus: deterministic split and tokenizer, faithful token binaries."""

from __future__ import annotations

import numpy as np
import torch

from models.data import TokenData, prepare_corpus, split_of, stdlib_files
from models.tokenizer import load_tokenizer


def test_split_depends_only_on_path():
    paths = [rel for rel, _ in stdlib_files()]
    val = [p for p in paths if split_of(p, 0.05) == "val"]
    assert 0.02 < len(val) / len(paths) < 0.09
    assert [split_of(p, 0.05) for p in reversed(paths)][::-1] == [split_of(p, 0.05) for p in paths]
    # a larger fraction only moves files into val, never out of it
    assert all(split_of(p, 0.2) == "val" for p in val)


def test_prepare_is_deterministic(tmp_path, tiny_corpus):
    prepare_corpus(tmp_path, vocab_size=512, val_fraction=0.2, limit_files=60, progress=False)
    for name in ("train.bin", "val.bin", "tokenizer.json", "meta.json"):
        assert (tmp_path / name).read_bytes() == (tiny_corpus / name).read_bytes(), name


def test_binaries_decode_to_the_source(tiny_corpus):
    data = TokenData(tiny_corpus)
    tok = load_tokenizer(tiny_corpus)
    files = [text for rel, text in stdlib_files()[:60] if split_of(rel, 0.2) == "val"]
    ids = data.splits["val"].astype(np.int64).tolist()
    eot = data.meta.eot_id
    docs, current = [], []
    for i in ids:
        if i == eot:
            docs.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    assert docs == files
    assert data.meta.tokens["val"] == len(ids)
    assert data.meta.vocab_size == 512


def test_batches_are_shifted_windows(tiny_corpus):
    data = TokenData(tiny_corpus)
    g = torch.Generator().manual_seed(0)
    x, y = data.batch("train", 4, 32, g)
    assert x.shape == y.shape == (4, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])
    # every row is a contiguous 33-token slice of train.bin (read here from the file itself):
    # x its first 32 tokens, y its last 32
    tokens = np.fromfile(tiny_corpus / "train.bin", dtype="<u2").astype(np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(tokens, 33)  # (N - 32, 33)
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        row = np.concatenate([row_x, row_y[-1:]])
        assert (windows == row).all(axis=1).any()
        assert np.array_equal(row[1:], row_y)
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(data.batch("train", 4, 32, g2)[0], x)
