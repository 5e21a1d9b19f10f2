"""FitNets (Romero et al. 2015): a middle student layer learns to predict a middle teacher layer first.

Stage 1 (hint), the first ``hint_epochs`` epochs: a regressor (connector: conv + BN, student channels to
teacher channels) maps the student's guided tap to the teacher's hint tap, and the loss is their mean squared
error alone, so only the student up to the guided layer (and the regressor) receives gradient.
Stage 2 (task), the remaining epochs: the whole student trains on CE, optionally with Hinton KD (the paper's
second stage) and with the hint loss kept (RepDistiller's single-stage FitNet: hint_epochs 0, weight 100).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field

from edgekd.distill.features import (
    FeatureDistiller,
    TapOptions,
    TapRef,
    declared_taps,
    describe_taps,
    pair_taps,
    resize_to,
)
from edgekd.distill.methods.kd import kd_loss
from edgekd.distill.registry import register_method
from edgekd.errors import EdgekdError
from edgekd.schema_base import Section


class FitNetOptions(Section):
    teacher_tap: TapRef | None = Field(
        None,
        description="The teacher's hint tap: index into its declared taps, declared name or module path. "
        "Default: the middle declared tap.",
    )
    student_tap: TapRef | None = Field(
        None,
        description="The student's guided tap (resized to the hint's size if it differs). Default: the "
        "deepest student tap of the hint's height and width.",
    )
    hint_epochs: int | None = Field(
        None,
        ge=0,
        description="Epochs of the hint stage before the task stage (0: none). Default: one eighth of "
        "train.epochs, at least 1 when there are 2 or more (RepDistiller's hint stage is 30 of 240).",
    )
    regressor_kernel: Literal[1, 3] = Field(1, description="Kernel size of the regressor's convolution.")
    task_hint_weight: float = Field(
        0.0, ge=0, description="Weight of the hint MSE kept during the task stage (RepDistiller uses 100)."
    )
    kd_alpha: float = Field(
        0.0, ge=0, le=1, description="Task stage: weight of Hinton KD; CE gets 1 - kd_alpha (0: CE only)."
    )
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the task stage's KD term.")


def hint_stage_epochs(options: FitNetOptions, epochs: int) -> int:
    if options.hint_epochs is None:
        return max(1, epochs // 8) if epochs > 1 else 0
    if options.hint_epochs >= epochs:
        raise EdgekdError(
            f"distill.fitnet.hint_epochs: {options.hint_epochs} leaves no task stage in {epochs} epochs; "
            "give fewer hint epochs or more train.epochs"
        )
    return options.hint_epochs


@register_method(
    "fitnet",
    FitNetOptions,
    "FitNets (Romero 2015): hint stage (regressor, MSE on a middle tap), then CE with optional KD.",
)
class FitNet(FeatureDistiller):
    method = "fitnet"
    preact = False
    learns_from_unlabeled = True

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        self.regressor = self.make_connectors(options.regressor_kernel)[0]
        # until the trainer says which epoch it is: the hint stage, unless there is none
        self.in_hint_stage = options.hint_epochs != 0

    def build_pairs(self, student, teacher, options):
        if options.teacher_tap is not None:
            teacher_tap = options.teacher_tap
        elif declared_taps(teacher):
            teacher_tap = len(declared_taps(teacher)) // 2  # the middle stage, as the paper's hint layer
        else:
            raise EdgekdError(f"{self.where}.teacher_tap: {describe_taps(teacher, 'teacher')}")
        taps = TapOptions(
            teacher_taps=[teacher_tap],
            student_taps=None if options.student_tap is None else [options.student_tap],
        )
        fields = ("teacher_tap", "student_tap")
        return pair_taps(
            teacher, student, taps, self.input_shape, preact=False, where=self.where, fields=fields
        )

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.in_hint_stage = epoch < hint_stage_epochs(self.options, epochs)

    def hint_loss(self, images):
        _, (hint,) = self.teacher_features(images)
        logits, (guided,) = self.student_features(images)
        predicted = resize_to(self.regressor(guided), hint.shape[-2:])
        return logits, F.mse_loss(predicted, hint)

    def forward_train(self, images, labels):
        logits, terms = self.distill_terms(images)
        if self.in_hint_stage:
            return logits, {"ce": logits.new_zeros(()), **terms}
        ce = (1 - self.options.kd_alpha) * F.cross_entropy(logits, labels)
        return logits, {"ce": ce, **terms}

    def distill_terms(self, images):
        """The hint (and KD) terms of the current stage; a term off in this stage is a zero, so every epoch
        logs the same names."""
        options = self.options
        if self.in_hint_stage:
            logits, hint = self.hint_loss(images)
            zero = logits.new_zeros(())
            return logits, {"hint": hint, **({"kd": zero} if options.kd_alpha > 0 else {})}
        if options.task_hint_weight > 0:
            logits, hint = self.hint_loss(images)
            hint = options.task_hint_weight * hint
        else:
            logits = self.student(images)
            hint = logits.new_zeros(())
        terms = {"hint": hint}
        if options.kd_alpha > 0:
            teacher_logits, _ = self.teacher_features(images)
            terms["kd"] = options.kd_alpha * kd_loss(logits, teacher_logits, options.temperature)
        return logits, terms
