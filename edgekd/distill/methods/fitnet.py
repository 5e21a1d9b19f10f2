"""FitNets (Romero et al. 2015): a middle student layer learns to predict a middle teacher layer.

Two published forms, chosen by ``variant``:

- ``romero`` (default), the paper's two stages. Stage 1 (hint), the first ``hint_epochs`` epochs: a regressor
  (connector: conv + BN, student channels to teacher channels) maps the student's guided tap to the teacher's
  hint tap, and the loss is their mean squared error alone, so only the student up to the guided layer (and
  the regressor) receives gradient. Stage 2, the remaining epochs: the whole student trains with knowledge
  distillation, ``(1 - kd_alpha)·CE + kd_alpha·T²·KL`` (Hinton KD at a constant weight; the paper anneals the
  weight of its KD term, which edgekd does not). The paper does not fix the hint stage's length; edgekd's
  default, one eighth of the epochs, is its own choice.
- ``repdistiller``, the single-stage FitNet of the RepDistiller benchmark (Tian et al. 2020) that most CIFAR
  tables quote: no hint stage, ``CE + β·hint`` from the first epoch (β = ``task_hint_weight``, 100 there), no
  KD term.

Options left unset take their variant's value; a value given explicitly wins. Until issue-level stage plans
land, both stages share one optimizer, one schedule and one best-epoch selection.
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
from edgekd.schema_base import MAX_EPOCHS, Section


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
    variant: Literal["romero", "repdistiller"] = Field(
        "romero",
        description="'romero': hint stage, then KD (the paper); 'repdistiller': one stage of CE + "
        "task_hint_weight·hint (the RepDistiller benchmark's FitNet).",
    )
    hint_epochs: int | None = Field(
        None,
        ge=0,
        le=MAX_EPOCHS,
        description="Epochs of the hint stage before the task stage (0: none). Default: romero one eighth "
        "of train.epochs (at least 1 when there are 2 or more; edgekd's choice, the paper fixes none), "
        "repdistiller 0.",
    )
    regressor_kernel: Literal[1, 3] = Field(1, description="Kernel size of the regressor's convolution.")
    task_hint_weight: float | None = Field(
        None,
        ge=0,
        description="Weight of the hint MSE during the task stage. Default: romero 0, repdistiller 100.",
    )
    kd_alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Task stage: weight of Hinton KD; CE gets 1 - kd_alpha. Default: romero 0.9 (as the "
        "`kd` method), repdistiller 0.",
    )
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the task stage's KD term.")


# The values an unset option takes under each variant.
VARIANT_DEFAULTS = {
    "romero": {"task_hint_weight": 0.0, "kd_alpha": 0.9},
    "repdistiller": {"task_hint_weight": 100.0, "kd_alpha": 0.0, "hint_epochs": 0},
}


def resolved_option(options: FitNetOptions, name: str) -> float:
    value = getattr(options, name)
    return VARIANT_DEFAULTS[options.variant][name] if value is None else value


def hint_stage_epochs(options: FitNetOptions, epochs: int) -> int:
    if options.hint_epochs is None:
        if options.variant == "repdistiller":
            return 0
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
    "FitNets (Romero 2015): hint stage (regressor, MSE on a middle tap), then KD; or RepDistiller's "
    "single-stage CE + hint.",
)
class FitNet(FeatureDistiller):
    method = "fitnet"
    preact = False
    learns_from_unlabeled = True

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        self.regressor = self.make_connectors(options.regressor_kernel)[0]
        self.kd_alpha = resolved_option(options, "kd_alpha")
        self.task_hint_weight = resolved_option(options, "task_hint_weight")
        # until the trainer says which epoch it is: the hint stage, unless there is none
        self.in_hint_stage = options.hint_epochs != 0 and not (
            options.variant == "repdistiller" and options.hint_epochs is None
        )

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
        ce = (1 - self.kd_alpha) * F.cross_entropy(logits, labels)
        return logits, {"ce": ce, **terms}

    def distill_terms(self, images):
        """The hint (and KD) terms of the current stage; a term off in this stage is a zero, so every epoch
        logs the same names."""
        options = self.options
        if self.in_hint_stage:
            logits, hint = self.hint_loss(images)
            zero = logits.new_zeros(())
            return logits, {"hint": hint, **({"kd": zero} if self.kd_alpha > 0 else {})}
        if self.task_hint_weight > 0:
            logits, hint = self.hint_loss(images)
            hint = self.task_hint_weight * hint
        else:
            logits = self.student(images)
            hint = logits.new_zeros(())
        terms = {"hint": hint}
        if self.kd_alpha > 0:
            teacher_logits, _ = self.teacher_features(images)
            terms["kd"] = self.kd_alpha * kd_loss(logits, teacher_logits, options.temperature)
        return logits, terms
