"""The objectives of the quantization-aware stage: the fake-quantized student trained on its labels (QAT)
or against the frozen full-precision teacher (QAD, quantization-aware distillation).

QAD is the KD objective on logits: (1 - alpha) * CE + alpha * T^2 * KL(teacher || student) at temperature T,
the teacher's logits restricted to the student's classes: edgekd.distill.methods.kd's objective itself. A
method's feature terms (FitNet's hint, SRM's sparse codes, OFD's margins) are not carried
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
from edgekd.distill.methods.kd import KD
from edgekd.schema_base import Section


class QuantizationAwareOptions(Section):
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)


class BatchNormsFrozen(Distiller):
    """A BatchNorm still in the student (one torch.fx could not fold) keeps the FP32 student's statistics."""

    def train(self, mode: bool = True) -> BatchNormsFrozen:
        super().train(mode)
        for module in self.student.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


class QuantizationAwareTraining(BatchNormsFrozen):
    """QAT: cross-entropy on the labels, nothing else."""

    uses_teacher = False

    def forward_train(self, images, labels):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}


class QuantizationAwareDistillation(BatchNormsFrozen, KD):
    """QAD: the KD method's own objective (and its unlabelled-image terms) on the fake-quantized student."""
