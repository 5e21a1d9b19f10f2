"""A method is a plan of training stages.

Most methods worth shipping are more than one training run: FitNet trains a hint, then the task; REFILLED
an embedding, then a classifier; SRM dictionaries, then intermediate layers, then KD. Each stage of a plan
has its own objective (a Distiller: what it trains and the loss terms it returns), its own optimizer and
schedule over exactly what it trains, its own epoch count, its own rule for which epoch's result it keeps,
and its own folder in the run. The student is handed from stage to stage: a stage starts from the weights
the previous stage selected.

A one-stage plan (`single_stage`) is the common case: the method's Distiller trained for the recipe's epochs
and selected by the recipe's `train.select`.

Stages hand results on as named *artifacts* (a trained embedding, dictionaries, a searched schedule): a stage
declares what it produces and consumes; each produced artifact is saved in the stage's folder and recorded
in metrics.json, and a recipe can name another run's file instead (`distill.artifacts`), in which case the
stage that produces it is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from edgekd.errors import EdgekdError

if TYPE_CHECKING:
    from torch import nn

    from edgekd.config.train import TrainConfig
    from edgekd.distill.base import Distiller
    from edgekd.distill.payload import PayloadSchema
    from edgekd.schema_base import Section

Selection = Literal["best_val", "last", "metric"]
# Which images a stage reads: "train", the run's labelled training images (and unlabelled ones when its
# objective has a label-free term), selected on the validation split; "holdout", a seeded per-class split of
# the labelled training images alone (HOLDOUT_FRACTION train, the rest score selection): for a stage that
# searches (DistPro), so the search never reads the validation or test images.
DataView = Literal["train", "holdout"]
HOLDOUT_FRACTION = 0.8
SELECTIONS: dict[str, str] = {
    "best_val": "the epoch of best validation accuracy (ties: lower validation loss)",
    "last": "the last epoch",
    "metric": "the epoch of best validation score of the stage's own metric",
}


@dataclass(frozen=True)
class Artifact:
    """A named result of a stage that later stages (or another recipe) consume.

    `holds` says what it is and how it is handed on: "student", the student's weights after the stage
    (loaded into the student before the consuming stage's fresh head, if any); "objective", whatever the
    producing objective's `artifact(name)` returns (tensors, numbers, strings, lists, dicts), given to the
    consuming objective's `use_artifact(name, payload)`. Either way it is saved with torch.save and read
    back weights_only.

    A file loaded from another run (`distill.artifacts`) is checked before anything is written: a "student"
    one against the architecture's own state_dict (keys, shapes, dtypes, finite values: checkpoint.py's
    fitting_state), an "objective" one by `check_payload` below, then by `fits` on the consuming stage's
    networks, built on the meta device, and again with the teacher's weights when a checkpoint gives them.
    Where the run trains its teacher, what needs its weights (SRM's teacher fingerprint) is checked when the
    consuming stage takes the payload in.
    """

    name: str
    file: str
    holds: Literal["student", "objective"]
    summary: str
    # For holds="objective": the payload's declared structure, beside the code that writes it.
    schema: PayloadSchema | None = None
    # Agreement of a valid payload with the method's options: check(payload, options, where).
    check: Callable[[Any, Section, str], None] | None = None
    # Agreement with the networks (taps, channels): fits(payload, networks, options, where).
    fits: Callable[[Any, Networks, Section, str], None] | None = None


@dataclass(frozen=True)
class Networks:
    """The consuming stage's teacher and student as the recipe builds them (on the meta device: their taps
    and shapes are known, their weights are not), and the shape of one input image. `teacher_weights`: the
    teacher is the run's, with the weights it will have (loaded from teacher.checkpoint)."""

    teacher: nn.Module
    student: nn.Module
    input_shape: tuple[int, int, int]
    teacher_weights: bool = False


def check_payload(artifact: Artifact, payload: Any, options: Section, where: str) -> None:
    """An "objective" artifact's payload has its declared structure and agrees with the method's options;
    an EdgekdError (one line, starting with `where`) says where it does not."""
    if artifact.schema is not None:
        artifact.schema.check(payload, where)
    if artifact.check is not None:
        artifact.check(payload, options, where)


@dataclass(frozen=True)
class Stage:
    """One training run of a plan.

    `select` None follows the recipe's `train.select`; `epochs` None trains the recipe's `train.epochs`.
    `fresh_head` gives the student a newly initialized classifier before the stage starts (a stage after an
    embedding stage, or a fine-tuning on other classes).
    `fresh_student` starts it over: from the student as the plan received it (its seeded initialization), not
    from what the previous stage trained, with the random state and the seeds of the plan's first stage
    (stages.py), so it trains as a one-stage plan of it would: a stage that replays what an earlier stage
    searched (DistPro), and its reference without the search, differ only in what the replay consumes.
    `schedule` is the stage's own learning-rate schedule (a `train.schedule` mapping) in place of the
    recipe's, e.g. a search's paper schedule; the recipe's `distill.stages` still changes it.
    `branch` makes it a side branch, a check of the student as handed on: it trains from that state, is
    scored on the validation and test images (reported, never used to choose anything) and hands nothing
    on: the next stage starts from the state before it, so turning a check on does not change the result.
    """

    name: str
    objective: type[Distiller]
    summary: str
    select: Selection | None = None
    epochs: int | None = None
    fresh_head: bool = False
    produces: tuple[Artifact, ...] = ()
    consumes: tuple[Artifact, ...] = ()
    view: DataView = "train"
    branch: bool = False
    fresh_student: bool = False
    schedule: dict[str, Any] | None = None

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """The recipe's training section with this stage's epochs, selection rule and schedule."""
        changes: dict[str, object] = {}
        if self.epochs is not None:
            changes["epochs"] = self.epochs
        if self.select in ("best_val", "last"):
            changes["select"] = self.select
        if self.schedule is not None:
            changes["schedule"] = type(base.schedule).model_validate(self.schedule)
        return base.model_copy(update=changes) if changes else base

    def selection(self, base: TrainConfig) -> Selection:
        return self.select if self.select is not None else base.select

    def with_epochs(self, epochs: int) -> Stage:
        return replace(self, epochs=epochs)


# A method's plan, given its options and the recipe's training section (stages may split its epochs).
PlanBuilder = Callable[["Section", "TrainConfig"], list[Stage]]


def single_stage(objective: type[Distiller], summary: str) -> PlanBuilder:
    """The plan of a method that is one training run: its Distiller for the recipe's epochs."""

    def plan(_options: Section, _train: TrainConfig) -> list[Stage]:
        return [Stage("train", objective, summary)]

    return plan


def split_epochs(field: str, embedding_epochs: int | None, epochs: int) -> int:
    """The first stage's epochs of a two-stage plan that shares train.epochs (default: half)."""
    first = embedding_epochs if embedding_epochs is not None else max(1, epochs // 2)
    if first >= epochs:
        raise EdgekdError(
            f"{field}: {first} leaves no second stage in train.epochs {epochs}; give fewer, or more train.epochs"
        )
    return first


def skipped(stage: Stage, index: int, count: int, loaded: Collection[str]) -> bool:
    """A stage is skipped when every artifact it produces is loaded from another run (`loaded`: their names;
    never the last stage: it makes the student)."""
    return index < count - 1 and bool(stage.produces) and all(a.name in loaded for a in stage.produces)


def describe_plan(stages: list[Stage]) -> str:
    """'hint (last) -> task (best_val)' for `edgekd list methods` and the report; produced artifacts in
    brackets: 'embedding (metric) [embedding.pt] -> classifier (train.select)'."""
    return " -> ".join(_describe_stage(stage) for stage in stages)


def _describe_stage(stage: Stage) -> str:
    produced = "".join(f" [{artifact.file}]" for artifact in stage.produces)
    described = f"{stage.name} ({stage.select or 'train.select'}){produced}"
    return f"[check: {described}]" if stage.branch else described


def produced_artifacts(stages: list[Stage]) -> dict[str, Artifact]:
    """Every artifact a plan produces, by name (what `distill.artifacts` may load instead)."""
    return {artifact.name: artifact for stage in stages for artifact in stage.produces}
