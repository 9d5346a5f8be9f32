"""Ladder rung 5: the golden GPT-2 against HF transformers' GPT2LMHeadModel, the peer."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from models import GPT2LMHead, load_model

# (vocab, n_positions, n_embd, n_layer, n_head, extra): odd heads, odd vocabularies, tiny contexts
CONFIGS = [
    pytest.param(1001, 16, 48, 2, 3, {}, id="3-heads-vocab-1001-ctx-16"),
    pytest.param(503, 8, 40, 1, 5, {}, id="5-heads-vocab-503-ctx-8"),
    pytest.param(4096, 64, 64, 3, 4, {"n_inner": 100}, id="n_inner-100"),
    pytest.param(97, 12, 36, 2, 6, {"activation_function": "gelu"}, id="erf-gelu-6-heads"),
    pytest.param(50257, 32, 24, 1, 1, {}, id="gpt2-vocab-1-head"),
]
LOGIT_TOL = 1e-4


def _hf_model(vocab, n_pos, n_embd, n_layer, n_head, extra, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=n_pos, n_embd=n_embd,
                                  n_layer=n_layer, n_head=n_head, bos_token_id=0,
                                  eos_token_id=0, **extra)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    # HF initialises biases and LayerNorm to 0/1; random values exercise every term.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize(("vocab", "n_pos", "n_embd", "n_layer", "n_head", "extra"), CONFIGS)
def test_logits_match_hf(tmp_path, vocab, n_pos, n_embd, n_layer, n_head, extra):
    hf = _hf_model(vocab, n_pos, n_embd, n_layer, n_head, extra)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert isinstance(ours, GPT2LMHead)
    ids = torch.randint(0, vocab, (3, n_pos), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got, _ = ours(ids)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= LOGIT_TOL


def test_hf_loads_what_we_save(tmp_path):
    """Our writer produces a checkpoint HF loads to the same logits (tied head stored once)."""
    hf = _hf_model(1001, 16, 48, 2, 3, {})
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    assert "lm_head.weight" not in load_file(tmp_path / "ours" / "model.safetensors")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, 1001, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, hf(ids).logits)


def test_kv_cache_equals_full_forward(tmp_path):
    hf = _hf_model(503, 24, 40, 3, 5, {})
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    ids = torch.randint(0, 503, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, full_present = model(ids)
        for split in (1, 7, 23):  # prompt of `split` tokens, then one token at a time
            logits, past = model(ids[:, :split])
            pieces = [logits]
            for t in range(split, 24):
                step, past = model(ids[:, t : t + 1], past)
                pieces.append(step)
            inc = torch.cat(pieces, dim=1)
            assert (inc - full).abs().max().item() <= 1e-5, split
            for (k1, v1), (k2, v2) in zip(past, full_present, strict=True):
                assert (k1 - k2).abs().max().item() <= 1e-5
                assert (v1 - v2).abs().max().item() <= 1e-5


def test_greedy_generation_matches_hf_generate(tmp_path):
    hf = _hf_model(1001, 32, 48, 2, 3, {})
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    prompt = [5, 17, 300, 999]
    want = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                       pad_token_id=0)[0, len(prompt):].tolist()
    assert ours.generate(prompt, 20) == want


def test_sampling_is_seeded(tmp_path):
    hf = _hf_model(1001, 64, 48, 2, 3, {})
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    a = model.generate([1, 2, 3], 40, temperature=1.0, top_k=50, seed=7)
    b = model.generate([1, 2, 3], 40, temperature=1.0, top_k=50, seed=7)
    c = model.generate([1, 2, 3], 40, temperature=1.0, top_k=50, seed=8)
    assert a == b
    assert a != c


def test_top_k_restricts_the_draw(tmp_path):
    hf = _hf_model(1001, 16, 48, 2, 3, {})
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    with torch.no_grad():
        logits, _ = model(torch.tensor([[4, 5, 6]]))
    top3 = set(torch.topk(logits[0, -1], 3).indices.tolist())
    from models.sampling import sample_next

    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits[0, -1], temperature=5.0, top_k=3, generator=g) for _ in range(200)}
    assert draws <= top3
    assert len(draws) == 3  # at temperature 5 all three appear in 200 draws


@pytest.mark.parametrize("layout", ["pytorch_model.bin", "bare-keys", "sharded"])
def test_other_checkpoint_layouts(tmp_path, layout):
    """pytorch_model.bin, the original release's key names (`h.0...`), and sharded files."""
    hf = _hf_model(1001, 16, 48, 2, 3, {})
    hf.save_pretrained(tmp_path / "src")
    state = load_file(tmp_path / "src" / "model.safetensors")
    out = tmp_path / "dst"
    out.mkdir()
    (out / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    if layout == "pytorch_model.bin":
        torch.save(state, out / "pytorch_model.bin")
    elif layout == "bare-keys":
        bare = {k.removeprefix("transformer."): v for k, v in state.items()}
        # the original release also stores the causal-mask buffers; they must be ignored
        bare["h.0.attn.bias"] = torch.ones(1, 1, 16, 16)
        save_file(bare, out / "model.safetensors")
    else:
        keys = sorted(state)
        half = len(keys) // 2
        shards = {"model-00001-of-00002.safetensors": keys[:half],
                  "model-00002-of-00002.safetensors": keys[half:]}
        weight_map = {}
        for name, shard_keys in shards.items():
            save_file({k: state[k] for k in shard_keys}, out / name)
            weight_map.update(dict.fromkeys(shard_keys, name))
        (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids = torch.randint(0, 1001, (1, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (load_model(out)(ids)[0] - hf(ids).logits).abs().max().item() <= LOGIT_TOL


def test_fp16_checkpoint_loads_as_fp32(tmp_path):
    hf = _hf_model(1001, 16, 48, 2, 3, {})
    hf.save_pretrained(tmp_path / "a")
    model = load_model(tmp_path / "a")
    model.save_pretrained(tmp_path / "b", dtype=torch.float16)
    assert load_file(tmp_path / "b" / "model.safetensors")["transformer.wte.weight"].dtype == \
        torch.float16
    reloaded = load_model(tmp_path / "b")
    assert reloaded.lm_head.weight.dtype == torch.float32
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
    want = model.transformer.h[0].mlp.c_fc.weight.half().float()
    assert torch.equal(reloaded.transformer.h[0].mlp.c_fc.weight, want)
