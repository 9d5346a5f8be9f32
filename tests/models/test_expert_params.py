"""Expert parameters are tagged where the MoE layer builds them (`mark_expert_params`), and
`split_parameters` sorts a model by the tag: exactly the parameters under an MoE layer's
`experts` (not its gate, its residual MLP or coefficient, nor the dense blocks), also after a
deep copy, which drops parameter attributes, and for a model that is an MoE layer itself."""

from __future__ import annotations

import copy

import pytest

from models.gpt2 import MLP
from models.moe import MoE, MoEGPT, MoEGPTConfig, is_expert_param, split_parameters


def _expert_names(model) -> list[str]:
    """Names of the parameters under an MoE layer's `experts`, found from the names alone."""
    layers = [name for name, m in model.named_modules() if isinstance(m, MoE)]
    prefixes = [f"{name}.experts." if name else "experts." for name in layers]
    return sorted(n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes)))


def _split_names(model) -> tuple[list[str], list[str]]:
    dense, expert = split_parameters(model)
    name = {id(p): n for n, p in model.named_parameters()}
    return sorted(name[id(p)] for p in dense), sorted(name[id(p)] for p in expert)


CONFIG = MoEGPTConfig(vocab_size=61, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                      moe_num_experts=4, moe_use_residual=True)


@pytest.mark.parametrize("copied", [False, True], ids=["built", "deepcopied"])
def test_split_is_the_experts_of_every_moe_layer(copied):
    model = MoEGPT(CONFIG)
    if copied:
        model = copy.deepcopy(model)
    dense, expert = _split_names(model)
    assert expert == _expert_names(model)
    assert len(expert) == 4 * 4  # one MoE block, 4 experts of c_fc and c_proj weight and bias
    assert any("residual_mlp" in n for n in dense)
    assert any(".gate." in n for n in dense)
    assert len(dense) + len(expert) == len(list(model.parameters()))


def test_a_bare_moe_layer_and_its_template():
    template = MLP(CONFIG)
    layer = MoE(CONFIG.n_embd, template, num_experts=3)
    assert _split_names(layer)[1] == _expert_names(layer)
    assert not any(is_expert_param(p) for p in template.parameters())
    assert not any(is_expert_param(p) for p in layer.gate.parameters())
