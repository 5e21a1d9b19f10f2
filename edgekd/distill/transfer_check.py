"""The quality of an intermediate transfer (SRM paper 004, Table II), as a side branch of a plan.

After a stage that pre-trains the student's intermediate layers (SRM's stage 2, FitNet's hint stage), a
fresh classifier learns with cross-entropy alone: only the classifier (`train: head`, the paper's linear
probing) or the whole student (`train: all`, its whole network update). Its validation and test accuracy
say how good a starting point the pre-training made, without the teacher's logits. The check is a branch
(plan.py): the student that goes on to the next stage is the pre-trained one, unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F

from edgekd.distill.base import Distiller
from edgekd.distill.options import TransferCheckOptions
from edgekd.distill.plan import Stage


class TransferCheck(Distiller):
    """CE alone on the labelled images, training the classifier only or the whole student."""

    uses_teacher = False

    def trainable_parameters(self):
        if self.options.transfer_check.train == "head":
            return [p for p in self.student.classifier.parameters() if p.requires_grad]
        return [p for p in self.student.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> TransferCheck:
        super().train(mode)
        if mode and self.options.transfer_check.train == "head":
            # linear probing: the layers below the classifier are fixed, their BatchNorm statistics too
            self.student.eval()
            self.student.classifier.train()
        return self

    def forward_train(self, images, labels):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}

    def stage_notes(self) -> str:
        if self.options.transfer_check.train == "head":
            return "check (linear probing): a fresh classifier alone, CE; hands nothing on"
        return "check (whole network update): fresh classifier, every layer, CE; hands nothing on"


def transfer_check_stages(check: TransferCheckOptions | None) -> list[Stage]:
    """The check's branch stage, or none when the recipe asks for no check."""
    if check is None:
        return []
    trained = "the classifier alone" if check.train == "head" else "the whole student"
    return [
        Stage(
            "check",
            TransferCheck,
            f"fresh head, {trained}, CE only; scored on validation and test, hands nothing on",
            None,
            check.epochs,
            fresh_head=True,
            branch=True,
        )
    ]
