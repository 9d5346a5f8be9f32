"""`TrainConfig`: everything a training run depends on, validated and JSON-serializable."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelConfigError

__all__ = ["TrainConfig"]

_DTYPES = ("float32", "float16", "bfloat16")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KERNELS = ("torch", "triton", "auto")


@dataclass
class TrainConfig:
    # model (GPT-2; vocab_size comes from the corpus' tokenizer)
    n_layer: int = 4  #: transformer blocks
    n_embd: int = 256  #: hidden size
    n_head: int = 4  #: attention heads
    block_size: int = 256  #: tokens per training window; also the model's n_positions
    # optimisation
    batch_size: int = 16  #: windows per micro-batch
    grad_accum: int = 1  #: micro-batches per optimiser step
    max_steps: int = 2000  #: optimiser steps
    lr: float = 1e-3  #: peak learning rate
    min_lr: float = 1e-4  #: learning rate at the end of the cosine
    warmup_steps: int = 100  #: linear warmup steps
    weight_decay: float = 0.1  #: AdamW decay on matrices and embeddings, not biases or norms
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  #: max global gradient norm; 0 disables clipping
    # speed: precision, kernels, compilation, sharding
    precision: str = "auto"  #: fp32, bf16, fp16 (autocast; fp32 weights); auto: bf16 on CUDA
    kernels: str = "torch"  #: torch, triton (CUDA only) or auto (Triton on CUDA)
    compile: bool = False  #: torch.compile the model
    shard: bool = False  #: FSDP2: shard weights, gradients, optimizer state over the processes
    # evaluation and checkpoints
    eval_interval: int = 200  #: steps between validation passes and checkpoint saves
    eval_batches: int = 20  #: fixed validation batches per pass
    seed: int = 1337  #: initialisation and batch order
    save_dtype: str = "float32"  #: dtype of model.safetensors (optimizer state stays fp32)
    # mixture of experts (MoE-GPT); moe_num_experts 0 and no moe_pyramid train dense GPT-2
    moe_num_experts: int = 0  #: experts per MoE block; 0 trains the dense GPT-2
    moe_pyramid: str = ""  #: PR-MoE: experts per MoE block, comma-separated (e.g. 4,8)
    moe_every: int = 2  #: every moe_every-th block is MoE (2: blocks 1, 3, ...)
    moe_top_k: int = 1  #: experts per token
    moe_gate: str = "topk"  #: topk, or dts (dense-to-sparse Gumbel gate)
    moe_capacity_factor: float = 1.0  #: training capacity ceil(k * factor * tokens / experts)
    moe_eval_capacity_factor: float = 1.0  #: inference capacity factor (with dropping)
    moe_min_capacity: int = 4  #: smallest expert capacity
    moe_drop_tokens: bool = True  #: drop tokens over capacity in training
    moe_eval_drop_tokens: bool = False  #: drop tokens over capacity at inference
    moe_drop_policy: str = "position"  #: over capacity keep the earliest (position) or probs
    moe_use_rts: bool = True  #: top-1: Random Token Selection chooses the dropped tokens
    moe_noisy_gate_policy: str = ""  #: router noise in training: Jitter, RSample, or none
    moe_renormalize: bool = True  #: renormalise the top-k weights to sum to 1
    moe_use_residual: bool = False  #: residual MoE: a dense MLP beside the experts
    moe_ep_size: int = 1  #: expert parallelism: ranks that split each MoE block's experts
    moe_aux_loss_coef: float = 0.01  #: weight of the load-balancing loss
    moe_z_loss_coef: float = 0.001  #: weight of the router z-loss
    moe_dts_tau_start: float = 2.0  #: DTS gate: Gumbel-softmax temperature at step 0
    moe_dts_tau_end: float = 0.3  #: DTS gate: temperature at the end of the anneal
    moe_dts_anneal_steps: int = 0  #: DTS gate: steps of the temperature decay; 0 = max_steps
    moe_dts_threshold: float = 0.25  #: DTS gate: active when weight >= threshold / experts
    # initialisation and distillation
    init_from: str = ""  #: start from this checkpoint; a dense one is upcycled to the MoE options
    distill_from: str = ""  #: teacher checkpoint for Mixture-of-Students distillation
    distill_alpha: float = 0.5  #: weight of the distillation term (1 - alpha on the labels)
    distill_temperature: float = 1.0  #: softmax temperature of the distillation term
    distill_stop_step: int = 0  #: staged KD: no distillation from this step on; 0 = never stop
    # data efficiency (DeepSpeed's data_efficiency JSON: curriculum learning, random-LTD)
    data_efficiency: str = ""  #: DeepSpeed data_efficiency JSON file; empty: plain random windows
    # fill-in-the-middle: training documents transformed at the character level (PSM / SPM)
    fim_rate: float = 0.0  #: share of training documents FIM-transformed; 0 trains left-to-right
    fim_spm_rate: float = 0.5  #: share of the transformed documents in SPM order
    fim_max_chars: int = 0  #: context-level FIM: pieces of at most this many characters; 0: files

    def __post_init__(self) -> None:
        positive = ("n_layer", "n_embd", "n_head", "block_size", "batch_size", "grad_accum",
                    "max_steps", "eval_interval", "eval_batches")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, not {value!r}")
        if self.n_embd % self.n_head:
            raise ModelConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ModelConfigError(f"seed must be an integer in 0..2**63-1, not {self.seed!r}")
        if not 0 < self.min_lr <= self.lr:
            raise ModelConfigError(f"need 0 < min_lr <= lr, not min_lr={self.min_lr} lr={self.lr}")
        if not (self.warmup_steps >= 0 and self.grad_clip >= 0 and self.weight_decay >= 0):
            raise ModelConfigError("warmup_steps, grad_clip and weight_decay must be >= 0")
        for name in ("beta1", "beta2"):  # AdamW's own check is a traceback
            if not 0 <= getattr(self, name) < 1:
                raise ModelConfigError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ModelConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.kernels not in KERNELS:
            raise ModelConfigError(
                f"kernels must be one of {', '.join(KERNELS)}, not {self.kernels!r}")
        if not isinstance(self.moe_ep_size, int) or self.moe_ep_size < 1:
            raise ModelConfigError(
                f"moe_ep_size must be a positive integer, not {self.moe_ep_size!r}")
        if self.moe_ep_size > 1 and not self.is_moe:
            raise ModelConfigError("moe_ep_size > 1 needs an MoE model (--moe-num-experts)")
        if self.save_dtype not in _DTYPES:
            raise ModelConfigError(f"save_dtype must be one of {_DTYPES}, not {self.save_dtype!r}")
        if not isinstance(self.moe_num_experts, int) or self.moe_num_experts < 0:
            raise ModelConfigError(
                f"moe_num_experts must be an integer >= 0, not {self.moe_num_experts!r}")
        if self.moe_dts_anneal_steps < 0 or self.distill_stop_step < 0:
            raise ModelConfigError("moe_dts_anneal_steps and distill_stop_step must be >= 0")
        if not 0 <= self.distill_alpha <= 1:
            raise ModelConfigError(f"distill_alpha must be in [0, 1], not {self.distill_alpha}")
        if not self.distill_temperature > 0:
            raise ModelConfigError(
                f"distill_temperature must be > 0, not {self.distill_temperature}")
        for name in ("fim_rate", "fim_spm_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not 0 <= value <= 1:
                raise ModelConfigError(f"{name} must be a number in [0, 1], not {value!r}")
        if isinstance(self.fim_max_chars, bool) or not isinstance(self.fim_max_chars, int) or \
                self.fim_max_chars < 0:
            raise ModelConfigError(
                f"fim_max_chars must be an integer >= 0, not {self.fim_max_chars!r}")
        if self.fim_rate > 0 and (self.init_from or self.distill_from):
            raise ModelConfigError(
                "fim_rate > 0 trains a new vocabulary (the FIM sentinels); it cannot start "
                "from init_from or distill towards distill_from")
        if self.is_moe:
            self.moe_config(vocab_size=2, eot_id=0)  # validates every moe_* option

    @property
    def is_moe(self) -> bool:
        return self.moe_num_experts > 0 or bool(self.moe_pyramid)

    def experts(self) -> int | list[int]:
        """moe_num_experts, or the PR-MoE pyramid's per-block counts."""
        if not self.moe_pyramid:
            return self.moe_num_experts
        try:
            return [int(n) for n in self.moe_pyramid.split(",")]
        except ValueError:
            raise ModelConfigError(
                f"moe_pyramid must be comma-separated integers such as 4,8, not "
                f"{self.moe_pyramid!r}") from None

    def moe_config(self, vocab_size: int, eot_id: int):
        """The MoE-GPT model configuration these options describe."""
        from ..moe import MoEGPTConfig

        return MoEGPTConfig(
            vocab_size=vocab_size, n_positions=self.block_size, n_embd=self.n_embd,
            n_layer=self.n_layer, n_head=self.n_head, bos_token_id=eot_id, eos_token_id=eot_id,
            moe_every=self.moe_every, moe_num_experts=self.experts(), moe_top_k=self.moe_top_k,
            moe_gate=self.moe_gate, moe_capacity_factor=self.moe_capacity_factor,
            moe_eval_capacity_factor=self.moe_eval_capacity_factor,
            moe_min_capacity=self.moe_min_capacity, moe_drop_tokens=self.moe_drop_tokens,
            moe_eval_drop_tokens=self.moe_eval_drop_tokens, moe_drop_policy=self.moe_drop_policy,
            moe_use_rts=self.moe_use_rts,
            moe_noisy_gate_policy=(None if self.moe_noisy_gate_policy in ("", "none", "None")
                                   else self.moe_noisy_gate_policy),
            moe_renormalize=self.moe_renormalize, moe_use_residual=self.moe_use_residual,
            moe_aux_loss_coef=self.moe_aux_loss_coef, moe_z_loss_coef=self.moe_z_loss_coef,
            moe_dts_tau_start=self.moe_dts_tau_start, moe_dts_tau_end=self.moe_dts_tau_end,
            moe_dts_anneal_steps=self.moe_dts_anneal_steps or self.max_steps,
            moe_dts_threshold=self.moe_dts_threshold,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ModelConfigError(f"unknown training option {unknown[0]!r}")
        return cls(**raw)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
