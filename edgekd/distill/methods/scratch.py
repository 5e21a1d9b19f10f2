"""The student trained alone on its labels: the baseline every method must beat."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from edgekd.distill.base import Distiller
from edgekd.distill.registry import ANY_RELATION, register_method
from edgekd.schema_base import Section


class ScratchOptions(Section):
    label_smoothing: float = Field(0.0, ge=0, lt=1)


@register_method(
    "scratch",
    ScratchOptions,
    "The student trained from scratch with cross-entropy only.",
    relations=ANY_RELATION,
)
class Scratch(Distiller):
    uses_teacher = False

    def forward_train(self, images, labels):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels, label_smoothing=self.options.label_smoothing)}
