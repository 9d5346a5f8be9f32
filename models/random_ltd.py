"""Random layerwise token dropping (random-LTD), for GPT-2 and MoE-GPT training.

In each chosen (middle) layer, every sequence of the batch keeps a random subset of its
tokens, drawn anew per layer and per sequence; the layer runs on the kept tokens only and the
others bypass it unchanged (their hidden state leaves the layer as it entered). The kept tokens
stay in their original order, and they carry their original positions (GPT-2 adds the position
embedding before the first layer), so the layer's causal mask over the kept subsequence is the
causal mask by original position: a kept token attends to the kept tokens at or before it.

The number kept follows DeepSpeed's random-LTD schedule (`fixed_linear`, its only one):

    kept(s) = min(max_value, m - m % seq_per_step),  m = floor(min_value + s / require_steps
                                                               * (max_value - min_value))

and, as DeepSpeed's `update_seq`, it only moves while it is below max_value. A layer whose
input is not longer than the kept count runs whole. Inference (eval mode) and incremental
decoding (a KV cache) never drop.

Wiring: `attach(model, RandomLTD(...))` sets `model.transformer.layer_token_drop`, which the
block loops of models.gpt2.GPT2Model and models.moe.moe_gpt.MoEGPTModel consult per layer;
the trainer calls `begin_step(step)` before each step's forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .errors import ModelConfigError

__all__ = ["RandomLTD", "RandomLTDSchedule", "attach", "detach", "subset_forward"]


class RandomLTDSchedule:
    """DeepSpeed's random-LTD kept-token schedule: `value(step)`, `update(step)`."""

    def __init__(self, min_value: int, max_value: int, require_steps: int,
                 seq_per_step: int = 1) -> None:
        for name, v in (("min_value", min_value), ("max_value", max_value),
                        ("require_steps", require_steps), ("seq_per_step", seq_per_step)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ModelConfigError(f"random-LTD {name} must be a positive integer, not {v!r}")
        if min_value > max_value:
            raise ModelConfigError(
                f"random-LTD min_value ({min_value}) must not exceed max_value ({max_value})")
        if min_value < seq_per_step:
            raise ModelConfigError(
                f"random-LTD min_value ({min_value}) must be at least seq_per_step "
                f"({seq_per_step}), or the first steps would keep no token")
        self.min_value, self.max_value = min_value, max_value
        self.require_steps, self.seq_per_step = require_steps, seq_per_step
        self.current = min_value

    def value(self, step: int) -> int:
        if step < 0:
            raise ModelConfigError(f"random-LTD step must be >= 0, not {step}")
        m = math.floor(float(step) / self.require_steps * (self.max_value - self.min_value)
                       + self.min_value)
        return min(m - m % self.seq_per_step, self.max_value)

    def update(self, step: int) -> int:
        """The kept count for `step`, remembered; frozen once it has reached max_value."""
        if self.current < self.max_value:
            self.current = self.value(step)
        return self.current


def subset_forward(x: Tensor, keep: Tensor, run: Callable[[Tensor], tuple]) -> tuple:
    """Run a layer on the kept tokens of each sequence; the others pass through unchanged.

    x (B, T, C); keep (B, K) ascending token indices per sequence; run(h (B, K, C)) -> a tuple
    whose first element is the layer's output (B, K, C). Returns that tuple with its first
    element replaced by (B, T, C): the layer's output at kept positions, x elsewhere.
    """
    B, _, C = x.shape
    index = keep.unsqueeze(-1).expand(B, keep.shape[1], C)  # (B, K, C)
    out = run(x.gather(1, index))
    return (x.scatter(1, index, out[0]), *out[1:])


class RandomLTD:
    """The per-layer hook: `ltd(layer, x, run)` -> run's tuple, on a random token subset."""

    def __init__(self, schedule: RandomLTDSchedule, n_layer: int,
                 layers: tuple[int, ...] | list[int] | None = None, seed: int = 0) -> None:
        if layers is None or len(layers) == 0:
            layers = tuple(range(1, n_layer - 1))  # the middle layers: all but first and last
            if not layers:
                raise ModelConfigError(
                    f"random-LTD drops tokens in the middle layers, and {n_layer} layers have "
                    "none; give the layers explicitly (random_ltd_layer_id)")
        for i in layers:
            if not 0 <= i < n_layer:
                raise ModelConfigError(
                    f"random-LTD layer {i} does not exist (the model has {n_layer} layers)")
        self.schedule = schedule
        self.layers = frozenset(layers)
        self.seed = seed
        self.kept = schedule.current
        self._generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_config(cls, config, n_layer: int, seed: int = 0) -> RandomLTD:
        """From models.data.curriculum.RandomLTDConfig (DeepSpeed's data_routing.random_ltd)."""
        schedule = RandomLTDSchedule(config.min_value, config.max_value, config.require_steps,
                                     config.seq_per_step)
        return cls(schedule, n_layer, config.layer_ids or None, seed)

    def begin_step(self, step: int) -> int:
        """Set this step's kept count and token draws (a function of seed and step alone, so
        a resumed run drops as an uninterrupted one); returns the kept count."""
        self.kept = self.schedule.update(step)
        self._generator.manual_seed(self.seed * 1_000_003 + step)
        return self.kept

    def keep_indices(self, B: int, T: int, device: torch.device) -> Tensor:
        """(B, kept) ascending random token indices, one uniform subset per sequence."""
        scores = torch.rand(B, T, generator=self._generator)  # (B, T)
        keep = scores.argsort(dim=1)[:, : self.kept].sort(dim=1).values
        return keep.to(device)

    def __call__(self, layer: int, x: Tensor, run: Callable[[Tensor], tuple]) -> tuple:
        B, T, _ = x.shape
        if layer not in self.layers or self.kept >= T:
            return run(x)
        return subset_forward(x, self.keep_indices(B, T, x.device), run)


def attach(model: nn.Module, ltd: RandomLTD) -> None:
    """Make `model` (GPT2LMHead or MoEGPT) drop tokens with `ltd` while training."""
    n_layer = len(model.transformer.h)
    if max(ltd.layers) >= n_layer:
        raise ModelConfigError(
            f"random-LTD layer {max(ltd.layers)} does not exist (the model has {n_layer})")
    model.transformer.layer_token_drop = ltd


def detach(model: nn.Module) -> None:
    model.transformer.layer_token_drop = None
