"""Mixture-of-Students (DeepSpeed-MoE): distil an MoE teacher into a shallower student.

The student (typically the teacher's MoE-GPT with fewer blocks, `student_from_teacher`) is
trained on

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(p_teacher^T || p_student^T)

where p^T is the softmax at temperature T, averaged over tokens. Staged KD: DeepSpeed-MoE
found that the KD term helps early and hurts once the student has converged towards the
teacher's capacity, so `kd_weight` switches it off from `stop_step` on (0 keeps it on).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ModelConfigError
from ..gpt2 import GPT2LMHead
from .moe_gpt import MoEGPT

__all__ = ["kd_loss", "kd_weight", "mos_loss", "student_from_teacher"]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over tokens; logits (..., V)."""
    if not temperature > 0:
        raise ModelConfigError(f"distillation temperature must be > 0, not {temperature!r}")
    V = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, V).float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, V).float() / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="batchmean")
    return kl * temperature**2


def mos_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
             alpha: float = 0.5, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(total, ce, kd) of the Mixture-of-Students objective; targets (...) token ids."""
    if not 0 <= alpha <= 1:
        raise ModelConfigError(f"distillation alpha must be in [0, 1], not {alpha!r}")
    V = student_logits.shape[-1]
    ce = F.cross_entropy(student_logits.reshape(-1, V).float(), targets.reshape(-1))
    kd = kd_loss(student_logits, teacher_logits.detach(), temperature)
    return (1 - alpha) * ce + alpha * kd, ce, kd


def kd_weight(step: int, alpha: float, stop_step: int = 0) -> float:
    """Staged KD: `alpha` before `stop_step`, 0 from it on (stop_step 0: always alpha)."""
    return alpha if stop_step <= 0 or step < stop_step else 0.0


@torch.no_grad()
def student_from_teacher(teacher: GPT2LMHead, n_layer: int) -> GPT2LMHead:
    """A student of the teacher's class with its first `n_layer` blocks, embeddings and final
    norm copied (MoS reduces depth; the MoE pattern of the kept blocks is unchanged)."""
    cfg = teacher.config
    if not isinstance(n_layer, int) or not 1 <= n_layer < cfg.n_layer:
        raise ModelConfigError(
            f"the student's n_layer must be in 1..{cfg.n_layer - 1}, not {n_layer!r}")
    changes = {"n_layer": n_layer}
    if isinstance(teacher, MoEGPT):
        if n_layer < cfg.moe_every:
            raise ModelConfigError(
                f"a {n_layer}-block student of a moe_every={cfg.moe_every} teacher has no MoE "
                "block; keep more blocks")
        if isinstance(cfg.moe_num_experts, list):
            kept = [i for i in cfg.moe_layers if i < n_layer]
            changes["moe_num_experts"] = cfg.moe_num_experts[:len(kept)]
    config = dataclasses.replace(cfg, **changes)
    student = type(teacher)(config).to(teacher.lm_head.weight)
    source = teacher.state_dict()
    student.load_state_dict({k: source[k].clone() for k in student.state_dict()})
    return student
