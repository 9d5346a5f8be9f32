"""Context-level FIM (`FIMConfig.max_chars`, `tandem train --fim-max-chars`): documents cut at
line ends into pieces, each transformed alone; found while setting up the FIM study, where
document-level FIM on 128-token windows of ~5,200-token files leaves no whole example in
any window (see models/data/fim.py and docs/data_efficiency.md)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data.fim import FIMConfig, fim_pieces, fim_token_stream
from models.errors import ModelConfigError
from models.tokenizer import gpt2_tokenizer
from models.train import TrainConfig


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer().with_fim()


def test_hand_computed_pieces():
    doc = "ab\ncd\nef\n"
    assert fim_pieces(doc, 100) == [doc]
    assert fim_pieces(doc, 6) == ["ab\ncd\n", "ef\n"]
    assert fim_pieces(doc, 5) == ["ab\n", "cd\n", "ef\n"]
    assert fim_pieces("abcdefg\nx", 3) == ["abc", "def", "g\nx"]  # a long line is cut inside
    assert fim_pieces("", 4) == [""]


@settings(max_examples=200, deadline=None)
@given(doc=st.text(alphabet="ab \n", max_size=80), limit=st.integers(1, 20))
def test_pieces_round_trip_and_respect_the_limit(doc, limit):
    pieces = fim_pieces(doc, limit)
    assert "".join(pieces) == doc
    assert all(1 <= len(p) <= limit for p in pieces) or pieces == [""]


def test_rate_0_is_the_document_level_stream(tok):
    docs = ["import os\n" * 30, "x = 1\n", "def g():\n    pass\n" * 12]
    eot = tok.token_to_id("<|endoftext|>")
    whole = fim_token_stream(docs, tok, FIMConfig(0.0), seed=3, eot_id=eot)
    cut = fim_token_stream(docs, tok, FIMConfig(0.0, max_chars=40), seed=3, eot_id=eot)
    assert np.array_equal(whole, cut)  # plain pieces are tokenised together


def test_every_piece_is_an_example_at_rate_1(tok):
    docs = ["import os\n" * 30, "x = 1\n"]
    eot = tok.token_to_id("<|endoftext|>")
    pieces = sum(len(fim_pieces(d, 40)) for d in docs)
    stream = fim_token_stream(docs, tok, FIMConfig(1.0, max_chars=40), seed=3, eot_id=eot)
    fim = tok.fim_tokens()
    assert (pieces, stream.tolist().count(fim.end)) == (9, 9)
    assert stream.tolist().count(eot) == len(docs)
    # document-level: one example per document
    assert fim_token_stream(docs, tok, FIMConfig(1.0), 3, eot).tolist().count(fim.end) == 2


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_max_chars(value):
    with pytest.raises(ModelConfigError, match="max_chars must be an integer >= 0"):
        FIMConfig(0.5, max_chars=value)
    with pytest.raises(ModelConfigError, match="fim_max_chars must be an integer >= 0"):
        TrainConfig(fim_max_chars=value)
