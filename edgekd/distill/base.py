"""The seam between a distillation method and the trainer.

A Distiller owns the student and whatever trainable parts its method adds (connectors, regressors); the
teacher is held beside it, frozen and in eval mode, and is neither trained nor saved with the student.
`forward_train` returns the student's logits and a dict of named loss terms, which the trainer sums. A
teacher method writes `distill_terms` (its terms besides cross-entropy, which need no label), so the trainer
can also apply them to unlabelled images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.schema_base import Section


@dataclass(frozen=True)
class DistillContext:
    """What a method may need to know about the run besides the two networks."""

    num_classes: int
    # Column of the teacher's logits for each of the student's classes (identity unless a class subset);
    # None when the teacher has none of the student's classes (label relation 'disjoint').
    teacher_class_ids: tuple[int, ...] | None
    # (channels, height, width) of one input image: feature methods size their connectors with a dry pass.
    input_shape: tuple[int, int, int] | None = None


class Distiller(nn.Module):
    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, options: Section, context: DistillContext
    ):
        super().__init__()
        self.student = student
        # Kept out of the module tree on purpose: parameters(), state_dict() and checkpoints hold only what
        # is trained. The caller places the teacher on the right device.
        self.__dict__["teacher"] = teacher
        self.options = options
        self.context = context
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    teacher: nn.Module | None

    # Whether the method learns from the teacher at all (its outputs, features or weights): the report says
    # so per model, since such a student inherits whatever the teacher saw.
    uses_teacher: bool = True

    # Whether the method has distillation terms that need no label (`distill_terms`), which the trainer then
    # also applies to unlabelled images (data.unlabeled). The baselines without a teacher have none.
    learns_from_unlabeled: bool = False

    def forward_train(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy on the labelled batch plus the method's distillation terms (override to weight CE)."""
        logits, terms = self.distill_terms(images)
        return logits, {"ce": F.cross_entropy(logits, labels), **terms}

    def distill_terms(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The student's logits and the method's weighted terms that compare it with the teacher."""
        raise NotImplementedError(f"{type(self).__name__} has no distillation term")

    def label_free_terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The distillation terms on a batch of images without labels (same names and weights)."""
        return self.distill_terms(images)[1]

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before each epoch (0-based) of the stage's ``epochs``.

        Must depend only on its arguments, so a resumed run behaves like an uninterrupted one.
        """

    def prepare_stage(self, data, device: torch.device) -> None:
        """Called by the trainer before the stage's first epoch (and again when it resumes): an objective
        that needs a pass over the data first (REFILLED's class centres) makes it here. Must depend only on
        the data and the frozen teacher, so a resumed stage computes the same thing."""

    def prepare_first_batch(self, images: torch.Tensor) -> None:
        """Called with the stage's first training batch before its first step: state a method sets from
        that batch (OFD's margins of taps without a BatchNorm) is made here, so a data-parallel run can
        hand rank 0's to every process before any step uses it."""

    # Why the stage cannot train data-parallel (DDP), as the end of "its stage 'x' ..."; "" when it can. A
    # stage that steps its own parameters from per-process gradients (DistPro's search) cannot: the processes'
    # updates would diverge. A build under --nproc that would train such a stage is refused before anything
    # trains (prepare.check_data_parallel).
    not_data_parallel: str = ""

    # Under DDP the trainer synchronises exactly `trainable_parameters()` (the stage's other parameters are
    # held frozen while it trains), and DDP expects a gradient for each of them in every step. A stage whose
    # loss leaves some of them without one in some steps sets this, so that DDP searches each step's graph for
    # them (slower) rather than waiting for their gradients forever. Only DistPro's replay of a process sets it
    # (the paper's per-step clip rests a pathway's transform at some steps); tests/test_ddp_methods.py trains
    # every stage of the catalog under DDP.
    unused_parameters: bool = False

    def on_step_start(self, step: int, steps: int) -> None:
        """Called before each optimizer step (0-based, counted over the stage's ``steps``), for objectives
        whose weights or schedules change within an epoch. Must depend only on its arguments."""

    def before_step(
        self, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        """Called with each training batch before the stage's optimizer step on it, with that optimizer (to
        read, never to step): a searching objective updates its own architecture parameters here (DistPro's
        pathway weights, from a hyper-gradient through the optimizer's unrolled step)."""

    # An objective that reads the stage's validation images itself (a search) says so: they are counted as
    # images used for selection, whatever the stage's selection rule.
    reads_validation_images: bool = False

    def artifact(self, name: str) -> dict:
        """The payload of an artifact this objective's stage produces with `holds="objective"` (plan.py):
        tensors, numbers, strings, lists and dicts only (it is read back weights_only)."""
        raise NotImplementedError(f"{type(self).__name__} produces no artifact '{name}'")

    def use_artifact(self, name: str, payload: dict) -> None:
        """Take in an artifact (`holds="objective"`) a previous stage or another run produced, before the
        stage trains."""
        raise NotImplementedError(f"{type(self).__name__} consumes no artifact '{name}'")

    def stage_notes(self) -> str:
        """One line on what this stage's objective did, when the stage's summary cannot say it in advance
        (e.g. "KD, T=4, α=0.9" or "CE alone: the teacher has none of the student's classes")."""
        return ""

    def stage_measures(self, data, device: torch.device) -> dict[str, float]:
        """Numbers that describe the stage's selected state (e.g. a reconstruction error on the validation
        images), recorded in metrics.json and shown in the report."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the stage's optimizer updates: by default every parameter that requires a gradient (the
        student's and the method's own parts). A stage that trains less says so here; under DDP exactly these
        are synchronised, so each of them must get a gradient in every step (see `unused_parameters`)."""
        return [p for p in self.parameters() if p.requires_grad]

    # A stage selected by its own metric (`select: metric`), e.g. an embedding stage that has no classifier
    # accuracy, names it and computes it on the validation split; higher is better.
    selection_metric_name: str = ""

    @property
    def has_selection_metric(self) -> bool:
        return bool(self.selection_metric_name)

    def selection_metric(self, data, device: torch.device) -> float:
        raise NotImplementedError(f"{type(self).__name__} defines no selection metric")

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's BN statistics must not drift while the student trains
        return self

    def extra_parameter_count(self) -> int:
        """Parameters the method trains besides the student (training-only: they are not exported)."""
        student_ids = {id(p) for p in self.student.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in student_ids)

    def learning_rate_factor(self) -> float:
        """Scale of the recipe's learning rate for this method (fine-tuning uses a smaller one)."""
        return 1.0

    @torch.inference_mode()
    def teacher_logits_on_student_classes(self, images: torch.Tensor) -> torch.Tensor:
        """Inference mode, not just no_grad: no autograd bookkeeping at all (version counters, views). The
        logits are only read by the loss (softmax targets), never saved for backward."""
        assert self.teacher is not None, "this method needs a teacher"
        return restrict_to_student_classes(self.teacher(images), self.context)


def restrict_to_student_classes(logits: torch.Tensor, context: DistillContext) -> torch.Tensor:
    """The teacher's logits of the student's classes (the identity without a class subset)."""
    ids = context.teacher_class_ids
    if ids is None:  # the pipeline refuses such a method before training; a library caller gets this
        raise ValueError("the teacher has none of the student's classes: its logits cannot teach them")
    if list(ids) == list(range(logits.shape[1])):
        return logits
    return logits.index_select(1, torch.as_tensor(ids, device=logits.device))
