"""Shared pieces of the kernel tests: where the Triton path runs, and how results compare.

The default suite runs every kernel under Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 when there is no CUDA). `forbid_reference` replaces a kernel module's torch
fallback with one that fails, so a test proves the Triton kernel produced its numbers.
"""

from __future__ import annotations

import pytest
import torch

from gpu_kernels import triton_available

#: CPU tests need the interpreter (on a CUDA machine they defer to the gpu-marked variants).
interpreter_only = pytest.mark.skipif(
    not triton_available("cpu"),
    reason="needs Triton's CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py "
           "without CUDA); with CUDA the gpu-marked tests cover the kernels")


def forbid_reference(monkeypatch, module, name: str):
    """Make `module.name` (the torch fallback) fail; return the original for the oracle."""
    original = getattr(module, name)

    def fail(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} ran: the Triton path was not taken")

    monkeypatch.setattr(module, name, fail)
    return original


def max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.float() - expected.float()).abs().max().item() if actual.numel() else 0.0


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float,
                 rtol: float = 0.0) -> None:
    """|actual - expected| <= atol + rtol * max|expected| everywhere, with the error reported."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = expected.float().abs().max().item() if expected.numel() else 0.0
    err = max_err(actual, expected)
    bound = atol + rtol * scale
    assert err <= bound, f"{name}: max error {err:.3g} > {atol} + {rtol} * {scale:.3g}"


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def fp32_leaves(*ts: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().float().requires_grad_(True) for t in ts]
