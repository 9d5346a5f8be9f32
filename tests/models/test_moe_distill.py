"""Mixture-of-Students: the KD loss by hand, staged KD, and depth-reduced students."""

from __future__ import annotations

import math

import pytest
import torch

from models.errors import ModelConfigError
from models.moe import MoEGPT, MoEGPTConfig, kd_loss, kd_weight, mos_loss, student_from_teacher
from models.testing import tiny_config


def test_kd_loss_by_hand():
    teacher = torch.tensor([[math.log(0.75), math.log(0.25)]])
    student = torch.tensor([[0.0, 0.0]])
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(student, teacher).item() == pytest.approx(want, rel=1e-5)
    assert kd_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    # temperature T: KL of the softened distributions, times T^2
    t = 2.0
    p = torch.softmax(teacher / t, dim=-1)[0]
    want_t = t**2 * sum(p[i] * math.log(p[i] / 0.5) for i in range(2))
    assert kd_loss(student, teacher, t).item() == pytest.approx(float(want_t), rel=1e-5)


def test_mos_loss_mixes_labels_and_teacher():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    y = torch.randint(0, 11, (2, 5))
    total, ce, kd = mos_loss(s, t, y, alpha=0.3, temperature=1.5)
    assert total.item() == pytest.approx(0.7 * ce.item() + 0.3 * kd.item(), rel=1e-6)
    assert mos_loss(s, t, y, alpha=0.0)[0].item() == pytest.approx(ce.item(), rel=1e-6)
    with pytest.raises(ModelConfigError, match=r"alpha must be in \[0, 1\]"):
        mos_loss(s, t, y, alpha=1.5)


def test_staged_kd_switches_off():
    assert kd_weight(10, 0.5, stop_step=100) == 0.5
    assert kd_weight(100, 0.5, stop_step=100) == 0.0
    assert kd_weight(10**6, 0.5, stop_step=0) == 0.5


def test_student_keeps_the_teachers_first_blocks():
    torch.manual_seed(0)
    config = MoEGPTConfig.from_dense(tiny_config(n_layer=4), moe_num_experts=[2, 4],
                                     moe_top_k=2)
    teacher = MoEGPT(config).eval()
    student = student_from_teacher(teacher, 2).eval()
    assert student.config.n_layer == 2
    assert student.config.moe_num_experts == [2]
    ids = torch.randint(0, 64, (2, 8))
    # the student is the teacher cut after block 1
    x = teacher.transformer.wte(ids) + teacher.transformer.wpe(torch.arange(8))
    for block in teacher.transformer.h[:2]:
        out = block(x, None)
        x = out[0]
    want = teacher.lm_head(teacher.transformer.ln_f(x))
    torch.testing.assert_close(student(ids)[0], want)
    with pytest.raises(ModelConfigError, match="no MoE block"):
        student_from_teacher(teacher, 1)
