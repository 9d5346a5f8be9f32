"""The golden model and the torch backend on CUDA (skipped, with the reason, without a GPU)."""

from __future__ import annotations

import pytest
import torch

from host.runtime import GenerationRequest, TorchBackend
from models import load_model

pytestmark = pytest.mark.gpu


def test_cuda_logits_match_cpu(tiny_checkpoint):
    cpu = load_model(tiny_checkpoint)
    gpu = load_model(tiny_checkpoint, device="cuda")
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, _ = cpu(ids)
        got, _ = gpu(ids.cuda())
    assert (got.cpu() - want).abs().max().item() <= 1e-4


def test_torch_backend_runs_on_cuda_with_the_same_tokens(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    want = model.generate([1, 2, 3], 12, temperature=0.8, top_k=20, seed=4)
    backend = TorchBackend(load_model(tiny_checkpoint), device="cuda")
    assert backend.describe()["device"] == "cuda"
    steps = list(backend.stream(GenerationRequest([1, 2, 3], 12, 0.8, 20, 4)))
    assert [s.token for s in steps] == want  # sampling draws on the CPU generator
    assert all(s.ms > 0 for s in steps)
