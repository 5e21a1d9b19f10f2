"""The recipe's `train:` section (and a teacher's own `teacher.train:`), the per-stage changes of
`distill.stages` merged into it, and data-parallel training (`distributed:`)."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from edgekd.config.data import DataConfig
from edgekd.config.errors import describe_validation_error
from edgekd.schema_base import (
    MAX_BATCH,
    MAX_EPOCHS,
    Section,
    shown_value,
)


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    # Bounded far above any useful value, so that an absurd one is refused here rather than overflowing the
    # optimizer's float32 step after the teacher has trained.
    lr: float = Field(0.05, gt=0, le=100)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by Adam).")
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0, le=1)


class ScheduleConfig(Section):
    name: Literal["multistep", "cosine", "constant"] = "cosine"
    milestones: list[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] = Field(
        default_factory=list, max_length=100, description="Epochs at which multistep multiplies lr by gamma."
    )
    gamma: float = Field(0.1, gt=0, le=1)
    factors: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None,
        description="Multistep only: the lr factor (relative to the initial lr) from each milestone on, "
        "one per milestone, e.g. [0.1, 0.01, 0.002]; replaces gamma.",
    )
    warmup_epochs: int = Field(
        0, ge=0, le=MAX_EPOCHS, description="Linear warm-up from lr/10 over this many epochs."
    )


class TrainConfig(Section):
    """How one network is trained: used for the teacher (when trained by the run) and for every student."""

    epochs: int = Field(30, ge=1, le=MAX_EPOCHS)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    select: Literal["best_val", "last"] = Field(
        "best_val",
        description="Which epoch's weights to keep: the best validation accuracy (ties go to the lower "
        "validation loss), or the last epoch.",
    )
    amp: Literal["bf16", "fp16"] | None = Field(
        None,
        description="Mixed precision: the forward passes under autocast in bf16, or fp16 with a dynamic loss "
        "scale; the weights and the optimizer stay FP32. Meant for CUDA (bf16 also runs on CPUs with AMX); "
        "null: FP32.",
    )
    channels_last: bool = Field(
        False,
        description="NHWC memory layout for the networks and their inputs: faster convolutions on tensor-core "
        "GPUs.",
    )

    @model_validator(mode="after")
    def _check_milestones(self) -> TrainConfig:
        factors = self.schedule.factors
        if factors is not None and len(factors) != len(self.schedule.milestones):
            raise ValueError(
                f"schedule.factors: {shown_value(factors)} has {len(factors)} values; give one per milestone "
                f"({len(self.schedule.milestones)})"
            )
        bad = [m for m in self.schedule.milestones if not 0 < m < self.epochs]
        if bad:
            raise ValueError(
                f"schedule.milestones: {shown_value(bad)} must lie inside 1..{self.epochs - 1} "
                f"(epochs is {self.epochs})"
            )
        return self


# The teacher's batch when the students are few-shot and teacher.train.batch_size is null: a normal batch,
# not the students' few-shot one (capped by the teacher's training images).
TEACHER_FEW_SHOT_BATCH = 128


class TeacherTrainConfig(TrainConfig):
    """How a teacher trained by the run is trained: the students' training fields, plus how it is fed (its
    data is every training image of its classes, not the students' draw, so its batch is its own)."""

    batch_size: int | None = Field(
        None,
        ge=1,
        le=MAX_BATCH,
        description="The teacher's training batch. Null: data.batch_size when the students train on their "
        f"whole split (no data.per_class); with few-shot students (data.per_class set), {TEACHER_FEW_SHOT_BATCH} "
        "(or the teacher's training-image count when smaller), not the students' few-shot batch.",
    )
    augment: Literal["none", "crop", "crop_flip", "resized_crop_flip"] | None = Field(
        None, description="The teacher's training augmentation; null: data.augment."
    )
    num_workers: int | None = Field(
        None,
        ge=0,
        le=256,
        description="DataLoader worker processes for the teacher's training; null: data.num_workers.",
    )

    def resolved_batch_size(self, data: DataConfig, train_images: int) -> int:
        """The batch the teacher trains at (the rule of `batch_size`'s description)."""
        if self.batch_size is not None:
            return self.batch_size
        if data.per_class is None:
            return data.batch_size
        return max(1, min(TEACHER_FEW_SHOT_BATCH, train_images))


# The training fields a stage of a method's plan may change (`distill.stages`).
STAGE_TRAIN_FIELDS = ("epochs", "optimizer", "schedule", "grad_clip")


def stage_train_config(base: TrainConfig, changes: dict[str, Any] | None) -> TrainConfig:
    """`base` with a stage's changes merged in field by field (`optimizer: {lr: 0.01}` keeps the rest of
    the optimizer); an optimizer or schedule of another `name` replaces the recipe's whole (Adam inherits
    no SGD momentum, a constant schedule no milestones). Raises ValueError naming the field when the result
    is not a valid training section."""
    if not changes:
        return base
    unknown = sorted(set(changes) - set(STAGE_TRAIN_FIELDS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], STAGE_TRAIN_FIELDS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(
            f"{unknown[0]}: a stage cannot change it ({hint}allowed: {', '.join(STAGE_TRAIN_FIELDS)})"
        )
    merged = base.model_dump()
    for section in ("optimizer", "schedule"):
        change = changes.get(section)
        if (
            isinstance(change, dict)
            and change.get("name", merged[section]["name"]) != merged[section]["name"]
        ):
            merged[section] = {}  # another kind: its own defaults, not the recipe's other kind's values
    merged = _deep_merge(merged, changes)
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        field, message = describe_validation_error(exc, TrainConfig)
        raise ValueError(f"{field}: {message}") from None


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class DistributedConfig(Section):
    """Data-parallel training (torchrun; `edgekd build --nproc N`). data.batch_size and
    data.unlabeled_batch_size are global: each step's batch is split evenly over the processes, so N processes
    train on the same batches as one."""

    sync_batchnorm: bool = Field(
        True,
        description="BatchNorm statistics over the global batch (PyTorch's SyncBatchNorm on CUDA, an all-reduce "
        "of the statistics on the CPU) rather than each process's share.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Process-group backend; auto: NCCL on CUDA, gloo on the CPU."
    )
    timeout_s: int = Field(
        1800, ge=30, le=86_400, description="How long a process waits for the others at a collective."
    )
