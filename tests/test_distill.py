"""Distillation methods: loss values against hand computation, registry, teacher handling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgekd.distill import DistillContext, get_method, method_names
from edgekd.distill.methods.kd import kd_loss
from edgekd.errors import EdgekdError


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_hand_computation():
    student, teacher, temperature = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 2.0
    p_s = softmax([v / temperature for v in student])
    p_t = softmax([v / temperature for v in teacher])
    expected = temperature**2 * sum(t * (math.log(t) - math.log(s)) for t, s in zip(p_t, p_s, strict=True))
    got = kd_loss(torch.tensor([student]), torch.tensor([teacher]), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # By hand: the softmaxes are mirror images whose log-ratios are +-1, so KL = p_hi - p_lo = 0.3202.
    assert expected == pytest.approx(4 * 0.3202, abs=1e-3)


def test_kd_loss_is_zero_for_equal_logits_and_averages_over_batch():
    logits = torch.randn(4, 5)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    single = kd_loss(logits[:1], logits[1:2], 4.0)
    doubled = kd_loss(logits[[0, 0]], logits[[1, 1]], 4.0)
    assert doubled.item() == pytest.approx(single.item(), rel=1e-6)


class Fixed(nn.Module):
    """A 'network' that returns given logits, to check which teacher columns KD reads."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits + 0 * self.dummy


def test_kd_with_class_subset_uses_the_subset_teacher_logits():
    entry = get_method("kd")
    options = entry.options(temperature=1.0, alpha=1.0)
    teacher_logits = torch.tensor([[0.0, 5.0, 1.0, 2.0]])
    student_logits = torch.tensor([[2.0, 1.0]])
    context = DistillContext(num_classes=2, teacher_class_ids=(3, 2))
    distiller = entry.distiller(Fixed(student_logits), Fixed(teacher_logits), options, context)
    _, terms = distiller.forward_train(torch.zeros(1, 1), torch.tensor([0]))
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-6)  # teacher columns 3, 2 = [2, 1] = the student
    assert terms["ce"].item() == 0.0  # alpha 1: no CE


def test_teacher_is_frozen_kept_in_eval_and_not_saved():
    student, teacher = nn.Sequential(nn.Linear(3, 2)), nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    entry = get_method("kd")
    distiller = entry.distiller(student, teacher, entry.options(), DistillContext(2, (0, 1)))
    distiller.train()
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(key.startswith("student.") for key in distiller.state_dict())
    assert distiller.extra_parameter_count() == 0


def test_registry_lists_methods_and_rejects_unknown():
    assert {"scratch", "kd", "finetune"} <= set(method_names())
    assert get_method("finetune").student_from_teacher
    with pytest.raises(EdgekdError, match="available"):
        get_method("nope")
