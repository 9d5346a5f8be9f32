"""The data analyzer: per-window sequence length and vocabulary rarity, hand-computed and
against a plain-Python recomputation; percentile tables; the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest

from host.cli import main
from models.data import DifficultyIndex, analyze
from models.errors import ModelError
from models.testing import analysis_corpus


def test_hand_computed(tmp_path):
    train = [1, 2, 0, 3, 3, 3, 3, 3, 4, 0, 0, 5, 9]  # 13 tokens: 3 windows of 4 (+1 target)
    analysis_corpus(tmp_path, train=train, val=[1, 2, 3, 4, 5, 6])
    analyze(tmp_path, block_size=4, progress=False)
    index = DifficultyIndex(tmp_path, 4)
    assert index.n_samples == 3
    # [1 2 0 | 3]: the first document's run is 3 (its EOT included); [3 3 3 3]: 4;
    # [4 0 | 0 | 5]: 2
    assert np.asarray(index.values("seqlen")).tolist() == [3, 4, 2]
    # train counts: 0 x3, 3 x5, 1 2 4 5 9 once each; 13 tokens
    r = {t: -math.log(c / 13) for t, c in {0: 3, 1: 1, 2: 1, 3: 5, 4: 1, 5: 1, 9: 1}.items()}
    expect = [r[1] + r[2] + r[0] + r[3], 4 * r[3], r[4] + 2 * r[0] + r[5]]
    assert np.allclose(index.values("vocab_rarity"), expect, rtol=0, atol=1e-12)
    assert np.asarray(index.order("vocab_rarity")).tolist() == [1, 0, 2]  # 3.82, 7.55, 8.06
    x, y = index.windows(np.array([2, 0]))
    assert x.tolist() == [[4, 0, 0, 5], [1, 2, 0, 3]]
    assert y.tolist() == [[0, 0, 5, 9],
                                                                          [2, 0, 3, 3]]
    # val: never-seen token 6 counts once, as DeepSpeed's analyzer does
    val = DifficultyIndex(tmp_path, 4, split="val")
    assert val.n_samples == 1
    assert val.values("vocab_rarity")[0] == pytest.approx(r[1] + r[2] + r[3] + r[4])


def test_matches_a_plain_recomputation(tmp_path):
    train, _ = analysis_corpus(tmp_path)
    B = 8
    analyze(tmp_path, block_size=B, progress=False)
    index = DifficultyIndex(tmp_path, B)
    counts = np.bincount(train, minlength=16)
    n = (len(train) - 1) // B
    assert index.n_samples == n
    for i in range(n):
        x = train[i * B: i * B + B]
        best = run = 0
        for t in x:
            run += 1
            best = max(best, run)
            if t == 0:
                run = 0
        assert index.values("seqlen")[i] == best
        rarity = sum(-math.log(max(counts[t], 1) / len(train)) for t in x)
        assert index.values("vocab_rarity")[i] == pytest.approx(rarity, rel=1e-12)
    for metric in ("seqlen", "vocab_rarity"):
        values = np.asarray(index.values(metric))
        table = np.asarray(index.percentiles(metric))
        assert table.shape == (101,)
        assert table[0] == values.min()
        assert table[100] == values.max()
        assert np.all(np.diff(table) >= 0)
        assert set(table) <= set(values)
        # entry p is the sorted values' element floor(p / 100 * (n - 1)) (numpy's 'lower')
        for p in (1, 25, 50, 75, 99):
            k = math.floor(p / 100 * (n - 1))
            assert np.sum(values < table[p]) <= k < np.sum(values <= table[p])
        assert np.all(np.diff(values[np.asarray(index.order(metric))]) >= 0)


def test_refuses_to_overwrite_and_rebuilds_with_force(tmp_path):
    analysis_corpus(tmp_path)
    out = analyze(tmp_path, block_size=8, progress=False)
    before = (out / "train_vocab_rarity.npy").read_bytes()
    with pytest.raises(ModelError, match="already exists; pass --force"):
        analyze(tmp_path, block_size=8, progress=False)
    assert analyze(tmp_path, block_size=8, force=True, progress=False) == out
    assert (out / "train_vocab_rarity.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_stale_index_is_refused(tmp_path):
    analysis_corpus(tmp_path)
    analyze(tmp_path, block_size=8, progress=False)
    analysis_corpus(tmp_path, train=[1, 2, 3] * 100)
    with pytest.raises(ModelError, match="made from another corpus"):
        DifficultyIndex(tmp_path, 8)
    with pytest.raises(ModelError, match="holds no analysis"):
        DifficultyIndex(tmp_path, 16)


def test_cli(tmp_path, capsys):
    analysis_corpus(tmp_path / "c")
    assert main(["data", "analyze", "--data", str(tmp_path / "c"), "--block-size", "8"]) == 0
    assert (tmp_path / "c" / "analysis_b8" / "train_seqlen.npy").is_file()
    assert "analyzing" in capsys.readouterr().err  # the progress bar
    assert main(["data", "analyze", "--data", str(tmp_path / "c"), "--block-size", "8"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "analyze", "--data", str(tmp_path / "nothing")]) == 2
    assert "not a prepared corpus" in capsys.readouterr().err
    assert main(["data", "analyze"]) == 2
    assert main(["data", "analyze", "--data", str(tmp_path / "c"), "--block-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "block_size must be a positive integer" in err
    assert "Traceback" not in err
