"""The student trained alone on its labels: the baseline every method must beat."""

from __future__ import annotations

import torch.nn.functional as F

from edgekd.distill.base import Distiller
from edgekd.distill.registry import implements


@implements("scratch")
class Scratch(Distiller):
    uses_teacher = False

    def forward_train(self, images, labels):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels, label_smoothing=self.options.label_smoothing)}
