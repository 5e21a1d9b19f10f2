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

Options left unset take their variant's value; a value given explicitly wins. The romero stages are a plan
(see plan.py): each has its own optimizer and schedule over what it trains; the hint stage keeps its last
epoch (the classifier has not trained, so validation accuracy means nothing there), the task stage is
selected as the recipe says. ``train.epochs`` is the total of both stages.
"""

from __future__ import annotations

import torch.nn.functional as F

from edgekd.distill.features import (
    FeatureDistiller,
    TapOptions,
    declared_taps,
    describe_taps,
    pair_taps,
    resize_to,
)
from edgekd.distill.methods.kd import kd_loss
from edgekd.distill.options import FitNetOptions, resolved_option
from edgekd.distill.plan import Artifact, Stage
from edgekd.distill.registry import implements
from edgekd.distill.transfer_check import transfer_check_stages
from edgekd.errors import EdgekdError


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


class _FitNetBase(FeatureDistiller):
    """The hint pairing both stages share: the teacher's hint tap and the student's guided tap."""

    method = "fitnet"
    preact = False
    learns_from_unlabeled = True

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

    def hint_loss(self, images):
        _, (hint,) = self.teacher_features(images)
        logits, (guided,) = self.student_features(images)
        predicted = resize_to(self.regressor(guided), hint.shape[-2:])
        return logits, F.mse_loss(predicted, hint)


class FitNetHint(_FitNetBase):
    """Stage 1 (romero): the regressor and the student up to its guided layer learn to predict the hint.

    The loss is the hint's MSE alone; the stage's optimizer holds exactly the parameters that loss reaches (the
    student's up to the guided tap, found by one backward pass on a blank batch at construction, and the
    regressor), so the student's later layers and its classifier are left as initialized, untouched by weight
    decay too.
    """

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        self.regressor = self.make_connectors(options.regressor_kernel)[0]
        self._trained = [*self.student_parameters_reaching_taps(), *self.regressor.parameters()]

    def trainable_parameters(self):
        return list(self._trained)

    def distill_terms(self, images):
        logits, hint = self.hint_loss(images)
        return logits, {"hint": hint}

    def forward_train(self, images, labels):
        return self.distill_terms(images)  # no label term: the classifier does not train in this stage


@implements("fitnet")
class FitNetTask(_FitNetBase):
    """The task stage (romero stage 2, or the one stage of repdistiller): ``(1 - kd_alpha)·CE + kd_alpha·KD``
    plus ``task_hint_weight·hint`` when that weight is above zero."""

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        self.kd_alpha = resolved_option(options, "kd_alpha")
        self.task_hint_weight = resolved_option(options, "task_hint_weight")
        if self.task_hint_weight > 0:
            self.regressor = self.make_connectors(options.regressor_kernel)[0]

    def forward_train(self, images, labels):
        logits, terms = self.distill_terms(images)
        ce = (1 - self.kd_alpha) * F.cross_entropy(logits, labels)
        return logits, {"ce": ce, **terms}

    def distill_terms(self, images):
        terms = {}
        if self.task_hint_weight > 0:
            logits, hint = self.hint_loss(images)
            terms["hint"] = self.task_hint_weight * hint
        else:
            logits = self.student(images)
        if self.kd_alpha > 0:
            teacher_logits, _ = self.teacher_features(images)
            terms["kd"] = self.kd_alpha * kd_loss(logits, teacher_logits, self.options.temperature)
        return logits, terms


HINTED_STUDENT = Artifact(
    "hinted_student",
    "hinted_student.pt",
    "student",
    "the student after the hint stage (its layers up to the guided one trained on the hint)",
)


def fitnet_plan(options: FitNetOptions, train) -> list[Stage]:
    hint = hint_stage_epochs(options, train.epochs)
    if hint == 0:
        return [Stage("train", FitNetTask, "CE + KD and/or hint, one stage")]
    return [
        Stage(
            "hint",
            FitNetHint,
            "regressor + student up to the guided layer, hint MSE",
            "last",
            hint,
            produces=(HINTED_STUDENT,),
        ),
        *transfer_check_stages(options.transfer_check),
        Stage(
            "task",
            FitNetTask,
            "the whole student, (1 - kd_alpha)·CE + kd_alpha·KD",
            None,
            train.epochs - hint,
            consumes=(HINTED_STUDENT,),
        ),
    ]
