"""Hinton et al. (2015) knowledge distillation on logits.

loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T)).
With a class subset, the teacher's logits are restricted to the student's classes before the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.distill.base import Distiller
from edgekd.distill.registry import implements


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@implements("kd")
class KD(Distiller):
    learns_from_unlabeled = True

    def forward_train(self, images, labels):
        logits, terms = self.distill_terms(images)
        return logits, {"ce": (1 - self.options.alpha) * F.cross_entropy(logits, labels), **terms}

    def distill_terms(self, images):
        logits = self.student(images)
        teacher_logits = self.teacher_logits_on_student_classes(images)
        return logits, {"kd": self.options.alpha * kd_loss(logits, teacher_logits, self.options.temperature)}
