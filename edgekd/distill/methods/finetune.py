"""The teacher itself fine-tuned on the student's data: the SKD paper's baseline.

It shows what the big model reaches on the student's task, and breaks the budget; the report marks it so.
Two choices define a fine-tuning baseline, and papers differ on both:

- ``head``: ``fresh`` (default) replaces the teacher's classifier by a new K-way layer, initialized from the
  seed, as when the customer's classes are new to the model; ``restricted`` keeps the teacher's classifier
  rows of the student's classes, so at step 0 the model already *is* the teacher restricted to those
  classes (possible only when the teacher knows them).
- ``trainable``: ``last_stage`` (default) trains the last declared stage of the network and everything after
  it (the SKD paper re-trains the last layers of the teacher-sized model); ``head`` only the classifier
  (a linear probe); ``all`` every layer. Frozen layers keep their BatchNorm statistics (eval mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.base import Distiller
from edgekd.distill.registry import implements
from edgekd.models import get_taps


def restricted_head(head: nn.Linear, class_ids: tuple[int, ...]) -> nn.Linear:
    """The teacher's classifier rows of `class_ids`, as a K-way layer."""
    narrow = nn.Linear(head.in_features, len(class_ids), bias=head.bias is not None)
    index = torch.as_tensor(class_ids)
    with torch.no_grad():
        narrow.weight.copy_(head.weight[index])
        if head.bias is not None:
            narrow.bias.copy_(head.bias[index])
    return narrow


def trainable_from(model: nn.Module, trainable: str) -> str | None:
    """The module path from which on (in registration order) parameters train; None: all of them."""
    if trainable == "all":
        return None
    return "classifier" if trainable == "head" else get_taps(model)[-1]


@implements("finetune")
class Finetune(Distiller):
    def __init__(self, student, teacher, options, context):
        head = student.classifier
        if options.head == "fresh":
            # Created under the seed the pipeline set for this student: the same fresh head for a seed.
            student.classifier = nn.Linear(head.in_features, context.num_classes, bias=head.bias is not None)
        elif list(context.teacher_class_ids) != list(range(head.out_features)):
            student.classifier = restricted_head(head, context.teacher_class_ids)
        super().__init__(student, teacher, options, context)
        self.frozen_modules = self._freeze(trainable_from(student, options.trainable))

    def _freeze(self, first_trained: str | None) -> list[nn.Module]:
        """Freeze every parameter registered before module `first_trained`; returns the frozen modules."""
        if first_trained is None:
            return []
        start = dict(self.student.named_modules())[first_trained]
        trained = {id(p) for p in start.parameters()}
        frozen_params = set()
        for _, parameter in self.student.named_parameters():
            if id(parameter) in trained:
                break
            parameter.requires_grad_(False)
            frozen_params.add(id(parameter))
        # A module all of whose parameters are frozen also keeps its running statistics.
        return [
            module
            for module in self.student.modules()
            if list(module.parameters(recurse=False))
            and all(id(p) in frozen_params for p in module.parameters(recurse=False))
        ]

    def train(self, mode: bool = True) -> Finetune:
        super().train(mode)
        for module in getattr(self, "frozen_modules", []):
            module.eval()
        return self

    def forward_train(self, images, labels):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}

    def learning_rate_factor(self) -> float:
        return self.options.lr_factor
