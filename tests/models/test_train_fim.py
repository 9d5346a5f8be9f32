"""`tandem train --fim-rate R --fim-spm-rate S`: FIM-transformed training documents, the
sentinels in the saved tokenizer, the embedding grown by four rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from host.cli import main as tandem
from models import load_model, load_tokenizer
from models.data import TokenData
from models.data.fim import FIMConfig, fim_train_data
from models.tokenizer import FIM_SENTINELS

FLAGS = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
         "--batch-size", "2", "--warmup-steps", "1", "--eval-interval", "2",
         "--eval-batches", "1", "--max-steps", "2", "--device", "cpu", "--no-progress"]


def test_fim_rate_0_reproduces_the_corpus_and_1_transforms_every_document(tiny_corpus):
    data = TokenData(tiny_corpus)
    plain, tok = fim_train_data(data, FIMConfig(rate=0.0), seed=1)
    # decoding each document and tokenising it again gives train.bin back, token for token
    assert np.array_equal(plain.splits["train"], np.asarray(data.splits["train"]))
    assert plain.meta.vocab_size == data.meta.vocab_size + 4 == tok.vocab_size
    fim, _ = fim_train_data(data, FIMConfig(rate=1.0, spm_rate=0.0), seed=1)
    stream = fim.splits["train"]
    sentinels = tok.fim_tokens()
    docs = data.meta.files["train"]
    for sid in (sentinels.prefix, sentinels.middle, sentinels.suffix, sentinels.end):
        assert (stream == sid).sum() == docs  # each once per document
    assert np.array_equal(fim.splits["val"], data.splits["val"])  # validation stays plain


def test_fim_run_saves_a_tokenizer_with_the_sentinels(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    assert tandem(["train", "--data", str(tiny_corpus), "--out", str(out), *FLAGS,
                   "--fim-rate", "1.0", "--fim-spm-rate", "0.5"]) == 0
    tok = load_tokenizer(out)
    base = load_tokenizer(tiny_corpus)
    assert tok.vocab_size == base.vocab_size + 4
    assert [tok.token_to_id(t) for t in FIM_SENTINELS] == list(range(base.vocab_size,
                                                                     base.vocab_size + 4))
    model = load_model(out)
    assert model.config.vocab_size == base.vocab_size + 4
    assert model.transformer.wte.weight.shape[0] == base.vocab_size + 4
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["fim_rate"], saved["fim_spm_rate"]) == (1.0, 0.5)


@pytest.mark.parametrize(("flags", "message"), [
    (["--fim-rate", "1.5"], "fim_rate must be a number in [0, 1], not 1.5"),
    (["--fim-rate", "-0.1"], "fim_rate must be a number in [0, 1], not -0.1"),
    (["--fim-spm-rate", "2"], "fim_spm_rate must be a number in [0, 1], not 2"),
    (["--fim-rate", "0.5", "--init-from", "x"], "cannot start from init_from"),
])
def test_bad_fim_options_are_one_line_exit_2(flags, message, tmp_path, capsys):
    code = tandem(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                   *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o").exists()
