"""The teacher itself fine-tuned on the student's data: the SKD paper's baseline.

It shows what the big model reaches on the student's task, and breaks the budget; the report marks it so.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from edgekd.distill.base import Distiller
from edgekd.distill.registry import register_method
from edgekd.schema_base import Section


class FinetuneOptions(Section):
    lr_factor: float = Field(
        0.1, gt=0, le=1, description="Multiplies train.optimizer.lr: fine-tuning takes smaller steps."
    )


@register_method(
    "finetune",
    FinetuneOptions,
    "The teacher's architecture and weights fine-tuned on the student's data (over budget, reported as such).",
    student_from_teacher=True,
)
class Finetune(Distiller):
    def forward_train(self, images, labels):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}

    def learning_rate_factor(self) -> float:
        return self.options.lr_factor
