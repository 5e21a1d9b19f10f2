"""The objectives of the quantization-aware stage: the fake-quantized student trained on its labels (QAT)
or against the frozen full-precision teacher (QAD, quantization-aware distillation).

QAD is the KD objective on logits: (1 - alpha) * CE + alpha * T^2 * KL(teacher || student) at temperature T,
the teacher's logits restricted to the student's classes (edgekd.distill.methods.kd's loss, the same
function). A method's feature terms (FitNet's hint, SRM's sparse codes, OFD's margins) are not carried
over: their connectors and dictionaries belong to the distillation stages, not to the deployed graph, and
the method's logit objective is what the deployed student is judged on. The teacher never sees fake
quantization.

Any BatchNorm left in the student (one torch.fx could not fold) stays in eval mode: its statistics are the
FP32 student's, and a few-shot batch would only add noise to them.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.distill.base import Distiller
from edgekd.distill.methods.kd import kd_loss
from edgekd.schema_base import Section


class QuantizationAwareOptions(Section):
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)


class QuantizationAwareTraining(Distiller):
    """QAT: cross-entropy on the labels, nothing else."""

    uses_teacher = False

    def train(self, mode: bool = True) -> QuantizationAwareTraining:
        super().train(mode)
        for module in self.student.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward_train(self, images, labels):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}


class QuantizationAwareDistillation(QuantizationAwareTraining):
    """QAD: KD against the frozen teacher (also on unlabelled images, when the run has them)."""

    uses_teacher = True
    learns_from_unlabeled = True

    def forward_train(self, images, labels):
        logits, terms = self.distill_terms(images)
        return logits, {"ce": (1 - self.options.alpha) * F.cross_entropy(logits, labels), **terms}

    def distill_terms(self, images):
        logits = self.student(images)
        teacher_logits = self.teacher_logits_on_student_classes(images)
        return logits, {"kd": self.options.alpha * kd_loss(logits, teacher_logits, self.options.temperature)}
