"""MoE on CUDA: the capacity modes launch no host synchronisation, and CUDA equals CPU."""

from __future__ import annotations

import pytest
import torch

from models.gpt2 import MLP
from models.moe import MoE, MoEGPT, MoEGPTConfig
from models.testing import tiny_config

M = 32


@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 2, 3])
def test_capacity_mode_forward_and_backward_never_synchronise(k):
    torch.manual_seed(0)
    layer = MoE(M, MLP(tiny_config(n_embd=M)), num_experts=4, k=k, capacity_factor=1.0,
                noisy_gate_policy="Jitter").cuda().train()
    x = torch.randn(64, M, device="cuda", requires_grad=True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    out, l_aux, _ = layer(x, generator=generator)  # warm-up: lazy initialisation may sync
    (out.square().sum() + l_aux).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, l_aux, _ = layer(x, generator=generator)
        (out.square().sum() + l_aux).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_moe_gpt_on_cuda_equals_cpu():
    torch.manual_seed(0)
    config = MoEGPTConfig.from_dense(tiny_config(n_layer=4), moe_num_experts=4, moe_top_k=2)
    model = MoEGPT(config).eval()
    ids = torch.randint(0, 64, (2, 16))
    want = model(ids)[0]
    got = model.cuda()(ids.cuda())[0].cpu()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
