"""The host's half of the heterogeneous pipeline: the prompt's KV cache, computed off the
devices.

The devices must still process the last prompt token themselves: it is the pass that ends in
the LM head and the first generated token. So for an n-token prompt the host computes the KV
of positions 0..n-2 and the job starts at POS0 = n-1.

Two numerics:
- `torch` (default): the golden PyTorch model in FP32 on CUDA when present, else the CPU; its
  KV is rounded to FP16 for the devices. It differs from the KV the devices would compute
  (FP16 activations) by a few FP16 ulps, so tokens equal the all-FPGA run's unless a step's
  top-2 logit margin is inside that difference (the tests measure it).
- `exact`: the devices' own arithmetic (`hw.numerics`, through the `isa` simulator on the
  host), so the KV, and therefore every token, is bit-identical to an all-FPGA run's. It is
  a reference for equality, not a fast path.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hw.hbm import HbmImage
from hw.layout import DESC
from models.gpt2 import GPT2LMHead

from ..compiler import CompiledModel
from ..errors import UsageError
from .api import ClusterFactory
from .kv import KvCache, read_kv

__all__ = ["PREFILL_NUMERICS", "PREFILL_TARGETS", "HostPrefill", "PrefillResult"]

#: Where the prompt's KV cache comes from: `fpga` (the devices, the all-FPGA run) or `gpu`
#: (the host's golden model on CUDA, or the CPU when there is no GPU).
PREFILL_TARGETS = ("fpga", "gpu")
PREFILL_NUMERICS = ("torch", "exact")


@dataclass
class PrefillResult:
    kv: KvCache  # per layer (k, v), each (n_head, positions, head_dim)
    positions: int  # prompt tokens the host processed (all but the last)
    device: str  # where it ran: cuda, cpu, or the host's emulation of the devices
    numerics: str  # torch (FP32) or exact (the devices' FP16 arithmetic)
    ms: float  # host wall time

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "numerics": self.numerics, "tokens": self.positions,
                "ms": round(self.ms, 3)}


class HostPrefill:
    """Computes the KV cache of all but the last prompt token on the host."""

    def __init__(self, model: GPT2LMHead, numerics: str = "torch", device: str | None = None,
                 compiled: CompiledModel | None = None,
                 cluster_factory: ClusterFactory | None = None) -> None:
        if numerics not in PREFILL_NUMERICS:
            raise UsageError(f"prefill numerics must be one of {', '.join(PREFILL_NUMERICS)}, "
                             f"not {numerics!r}")
        self.numerics = numerics
        self.model = model
        if numerics == "exact":
            if compiled is None or compiled.images is None or cluster_factory is None:
                raise ValueError("exact prefill needs the compiled model (with its weights) "
                                 "and a cluster factory")
            self.compiled = compiled
            self.images: list[HbmImage] = compiled.images
            self.cluster_factory = cluster_factory
            self.device = "host (hw.numerics emulation of the devices)"
            return
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # the golden model on the prefill device; the CPU copy stays where the caller has it
        self.torch_model = model if self.device == "cpu" else copy.deepcopy(model).to(self.device)
        self.torch_model.eval()
        # one warm-up pass: CUDA context creation, kernel selection and the allocator's first
        # growth are start-up costs, not prefill time
        with torch.no_grad():
            self.torch_model(torch.zeros((1, 1), dtype=torch.long, device=self.device))
        if self.device == "cuda":
            torch.cuda.synchronize()

    def describe(self) -> dict[str, Any]:
        return {"prefill_device": self.device, "prefill_numerics": self.numerics}

    def run(self, prompt_ids: list[int]) -> PrefillResult:
        """KV of positions 0..len(prompt_ids)-2."""
        n = len(prompt_ids) - 1
        start = time.perf_counter()
        kv = self._exact(prompt_ids[:n]) if self.numerics == "exact" else self._torch(
            prompt_ids[:n])
        ms = (time.perf_counter() - start) * 1e3
        return PrefillResult(kv, n, self.device, self.numerics, ms)

    def _torch(self, ids: list[int]) -> KvCache:
        cfg = self.model.config
        if not ids:
            empty = np.zeros((cfg.n_head, 0, cfg.n_embd // cfg.n_head), np.float32)
            return [(empty, empty)] * cfg.n_layer
        with torch.no_grad():
            _, present = self.torch_model(torch.tensor([ids], device=self.device))
            # (1, nh, T, hs) per layer -> host memory, the transfer's source buffers
            kv = [(k[0].float().cpu().numpy(), v[0].float().cpu().numpy())
                  for k, v in present]
        if self.device == "cuda":
            torch.cuda.synchronize()
        return kv

    def _exact(self, ids: list[int]) -> KvCache:
        """The compiled program run on the host's emulation of the devices over `ids` (one
        token generated and discarded: every pass that ends the prompt ends in the LM head)."""
        plan = self.compiled.plan
        if not ids:
            return read_kv(self.images, plan, 0)
        cluster = self.cluster_factory(self.compiled)
        cluster.load(self.compiled.programs, [im.copy() for im in self.images])
        for d in range(plan.devices):
            cluster.write_i32(d, DESC.N_PROMPT, [len(ids)])
            cluster.write_i32(d, DESC.POS0, [0])
            cluster.write_i32(d, DESC.MAX_NEW, [1])
            cluster.write_i32(d, DESC.PROMPT, ids)
        cluster.start()
        cluster.wait()
        return read_kv([cluster.image(d) for d in range(plan.devices)], plan, len(ids))
