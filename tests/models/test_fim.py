"""Fill-in-the-middle: the character-level transform (hand-computed draws, round trip, rates),
the PSM/SPM token orders and infill prompts, the tokenizer's sentinels, the embedding resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data.fim import (
    FIMConfig,
    FIMExample,
    ensure_fim,
    fim_token_ids,
    fim_token_stream,
    fim_transform,
    infill_prompt_ids,
    resize_token_embeddings,
)
from models.errors import CheckpointError, ModelConfigError, PromptError
from models.gpt2 import GPT2LMHead
from models.testing import tiny_config
from models.tokenizer import FIM_SENTINELS, Tokenizer, gpt2_tokenizer, load_tokenizer

DOC = "def f(x):\n    return x\n"


class Draws:
    """A stand-in for numpy's Generator that hands out given draws and checks the calls."""

    def __init__(self, doc_len, uniforms, cuts):
        self.doc_len, self.uniforms, self.cuts = doc_len, list(uniforms), list(cuts)

    def random(self):
        return self.uniforms.pop(0)

    def integers(self, low, high, size):
        assert (low, high, size) == (0, self.doc_len + 1, 2)  # both ends included
        return np.array(self.cuts.pop(0))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return gpt2_tokenizer().with_fim()


def test_hand_computed_psm_and_spm():
    ex = fim_transform(DOC, Draws(len(DOC), [0.3, 0.7], [[12, 4]]), FIMConfig(0.5, 0.5))
    assert ex == FIMExample("def ", "f(x):\n  ", "  return x\n", "psm")
    ex = fim_transform(DOC, Draws(len(DOC), [0.49, 0.1], [[0, 23]]), FIMConfig(0.5, 0.5))
    assert ex == FIMExample("", DOC, "", "spm")
    # u >= rate: plain, and nothing else is drawn
    assert fim_transform(DOC, Draws(len(DOC), [0.5], []), FIMConfig(0.5, 0.5)) is None
    ex = fim_transform(DOC, Draws(len(DOC), [0.999, 0.0], [[3, 3]]), FIMConfig(1.0, 0.0))
    assert ex == FIMExample("def", "", " f(x):\n    return x\n", "psm")  # rate 1: always cut
    assert fim_transform(DOC, Draws(len(DOC), [0.0], []), FIMConfig(0.0, 1.0)) is None


def test_seeded_draws_in_the_documented_order():
    ex = fim_transform(DOC, np.random.default_rng(7), FIMConfig(1.0, 0.5))
    r = np.random.default_rng(7)
    u = r.random()
    a, b = sorted(r.integers(0, len(DOC) + 1, size=2).tolist())
    mode = "spm" if r.random() < 0.5 else "psm"
    assert u < 1.0
    assert ex == FIMExample(DOC[:a], DOC[a:b], DOC[b:], mode)


@settings(max_examples=100, deadline=None)
@given(doc=st.text(max_size=200), seed=st.integers(0, 2**32 - 1),
       rate=st.floats(0, 1), spm=st.floats(0, 1))
def test_round_trip(doc, seed, rate, spm):
    ex = fim_transform(doc, np.random.default_rng(seed), FIMConfig(rate, spm))
    if ex is not None:
        assert ex.prefix + ex.middle + ex.suffix == doc


@settings(max_examples=60, deadline=None)
@given(doc=st.text(max_size=80), seed=st.integers(0, 1000))
def test_token_orders_decode_back_to_the_document(tok, doc, seed):
    fim = tok.fim_tokens()
    for mode in ("psm", "spm"):
        ex = fim_transform(doc, np.random.default_rng(seed), FIMConfig(1.0, float(mode == "spm")))
        ids = fim_token_ids(ex, tok)
        assert ids[0] == fim.prefix
        assert ids[-1] == fim.end
        if mode == "psm":
            s, m = ids.index(fim.suffix), ids.index(fim.middle)
            prefix, suffix, middle = tok.decode(ids[1:s]), tok.decode(ids[s + 1:m]), \
                tok.decode(ids[m + 1:-1])
            assert (prefix, suffix, middle) == (ex.prefix, ex.suffix, ex.middle)
        else:
            assert ids[1] == fim.suffix
            m = ids.index(fim.middle)
            assert tok.decode(ids[2:m]) == ex.suffix
            assert tok.decode(ids[m + 1:-1]) == ex.prefix + ex.middle
        assert ids.count(fim.end) == 1


def test_token_orders_exactly(tok):
    fim, enc = tok.fim_tokens(), tok.encode
    ex = FIMExample("def ", "f(x):\n  ", "  return x\n", "psm")
    assert fim_token_ids(ex, tok) == [fim.prefix, *enc("def "), fim.suffix, *enc("  return x\n"),
                                      fim.middle, *enc("f(x):\n  "), fim.end]
    ex = FIMExample("def ", "f(x):\n  ", "  return x\n", "spm")
    assert fim_token_ids(ex, tok) == [fim.prefix, fim.suffix, *enc("  return x\n"), fim.middle,
                                      *enc("def "), *enc("f(x):\n  "), fim.end]


@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_infill_prompt_is_the_training_order_up_to_the_middle(tok, mode):
    ex = FIMExample("x = [", "1, 2", "]\n", mode)
    prompt = infill_prompt_ids(tok, ex.prefix, ex.suffix, mode)
    train = fim_token_ids(ex, tok)
    assert train[: len(prompt)] == prompt
    assert train[len(prompt):] == [*tok.encode(ex.middle), tok.fim_tokens().end]
    if mode == "psm":
        fim = tok.fim_tokens()
        assert prompt == [fim.prefix, *tok.encode("x = ["), fim.suffix, *tok.encode("]\n"),
                          fim.middle]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rate": 1.5}, "FIM rate must be a number in [0, 1], not 1.5"),
    ({"rate": -0.1}, "FIM rate must be a number in [0, 1], not -0.1"),
    ({"rate": float("nan")}, "FIM rate must be a number in [0, 1], not nan"),
    ({"spm_rate": 2}, "FIM SPM rate must be a number in [0, 1], not 2"),
    ({"rate": True}, "FIM rate must be a number in [0, 1], not True"),
])
def test_bad_rates(kwargs, message):
    with pytest.raises(ModelConfigError) as e:
        FIMConfig(**kwargs)
    assert str(e.value) == message


def test_rates_and_uniform_cuts():
    rng, cfg, n = np.random.default_rng(0), FIMConfig(0.5, 0.25), 4000
    doc = "x" * 1000
    out = [fim_transform(doc, rng, cfg) for _ in range(n)]
    cut = [e for e in out if e is not None]
    assert abs(len(cut) / n - 0.5) < 0.03
    assert abs(sum(e.mode == "spm" for e in cut) / len(cut) - 0.25) < 0.03
    a = np.array([len(e.prefix) for e in cut]) / 1000
    b = np.array([len(e.prefix) + len(e.middle) for e in cut]) / 1000
    # the smaller and larger of two uniform points: means 1/3 and 2/3
    assert abs(a.mean() - 1 / 3) < 0.02
    assert abs(b.mean() - 2 / 3) < 0.02


def test_errors_without_sentinels():
    with pytest.raises(PromptError, match="has no FIM sentinels"):
        infill_prompt_ids(gpt2_tokenizer(), "a", "b")
    with pytest.raises(ModelConfigError, match="FIM mode must be one of"):
        infill_prompt_ids(gpt2_tokenizer().with_fim(), "a", "b", mode="pms")


def test_sentinels_extend_the_vocabulary(tmp_path):
    base = gpt2_tokenizer()
    tok = base.with_fim()
    assert base.fim_tokens() is None  # the cached GPT-2 tokenizer is untouched
    assert base.vocab_size == 50257
    assert tok.vocab_size == 50261
    assert tok.fim_tokens() == (fim := tok.fim_tokens())
    assert [fim.prefix, fim.middle, fim.suffix, fim.end] == [50257, 50258, 50259, 50260]
    assert tok.encode("Hello world") == [15496, 995]  # existing ids keep their meaning
    assert tok.encode("a<|fim_suffix|>b") == [64, fim.suffix, 65]
    assert tok.with_fim().vocab_size == 50261  # idempotent
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).fim_tokens() == fim


def test_partial_sentinels_are_refused():
    from tokenizers import Tokenizer as HF

    backend = HF.from_str(gpt2_tokenizer().backend.to_str())
    backend.add_special_tokens([FIM_SENTINELS[0]])
    with pytest.raises(CheckpointError, match="some FIM sentinels"):
        Tokenizer(backend, "partial").fim_tokens()
    assert Tokenizer(backend, "partial").with_fim().fim_tokens() is not None


@pytest.mark.parametrize("tied", [True, False])
def test_resize_keeps_existing_tokens(tmp_path, tied):
    torch.manual_seed(0)
    model = GPT2LMHead(tiny_config(tie_word_embeddings=tied)).eval()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        before = model(ids)[0]
    old_wte = model.transformer.wte.weight.detach().clone()
    resize_token_embeddings(model, 68)
    assert model.config.vocab_size == 68
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    with torch.no_grad():
        after = model(ids)[0]
    assert after.shape == (2, 10, 68)
    assert torch.equal(after[..., :64], before)  # old tokens: bit-identical logits
    assert torch.equal(model.transformer.wte.weight[:64], old_wte)
    assert torch.allclose(model.transformer.wte.weight[64:], old_wte.mean(0).expand(4, -1))
    model.save_pretrained(tmp_path)
    again = GPT2LMHead.from_pretrained(tmp_path)
    assert torch.equal(again(ids)[0], after)
    with pytest.raises(ModelConfigError, match="must be an integer >= the model's 68"):
        resize_token_embeddings(model, 60)


def test_ensure_fim_resizes_on_load():
    model = GPT2LMHead(tiny_config(vocab_size=50257, n_positions=16))
    tok = ensure_fim(model, gpt2_tokenizer())
    assert model.config.vocab_size == tok.vocab_size == 50261
    assert model.transformer.wte.weight.shape[0] == 50261
    ensure_fim(model, tok)  # already covered: nothing changes
    assert model.config.vocab_size == 50261


def test_token_stream(tok):
    docs = ["import os\n", "x = 1\n", "def g():\n    pass\n"]
    eot = tok.token_to_id("<|endoftext|>")
    plain = fim_token_stream(docs, tok, FIMConfig(0.0), seed=1, eot_id=eot)
    assert plain.tolist() == [t for d in docs for t in [*tok.encode(d), eot]]
    fim = tok.fim_tokens()
    all_fim = fim_token_stream(docs, tok, FIMConfig(1.0), seed=1, eot_id=eot)
    assert all_fim.tolist().count(fim.end) == 3
    assert np.array_equal(all_fim, fim_token_stream(docs, tok, FIMConfig(1.0), 1, eot))
