"""Running a method's plan: its stages in order, each a Trainer of its own, the student handed along.

Each stage trains in its own folder (`<method folder>/<stage>/`). Under --resume a finished stage is not
trained again (its selected state is loaded) and the stage in progress continues after its last completed
epoch, so an interrupted plan ends bit for bit where an uninterrupted one does: every stage after the first
starts from a seed of its own, never from whatever random state the previous stage left behind.

A stage's artifacts are saved in `<stage>/artifacts/` and handed to the stages that consume them. A stage
whose every artifact the recipe loads from another run (`distill.artifacts`) is skipped.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.config.train import TrainConfig
from edgekd.data import DataBundle
from edgekd.distill.base import DistillContext, Distiller
from edgekd.distill.plan import HOLDOUT_FRACTION, Artifact, Stage
from edgekd.layout import MethodFolder, StageFolder
from edgekd.recipe import Recipe
from edgekd.records import DataUse, StageArtifact, StageRecord
from edgekd.schema_base import Section
from edgekd.seeds import construction_seed
from edgekd.train.checkpoint import fitting_state, load_checkpoint, save_checkpoint
from edgekd.train.dist import Parallel, is_main_process
from edgekd.train.resolve import ResolvedStage, method_stages, resolve_stages
from edgekd.train.trainer import FitResult, Trainer, evaluate


@dataclass(frozen=True)
class StageResult:
    record: StageRecord
    fit: FitResult | None  # None: the stage was skipped (its artifacts were loaded)

    @property
    def name(self) -> str:
        return self.record.stage


@dataclass(frozen=True)
class PlanResult:
    student: nn.Module
    stages: list[StageResult]

    @property
    def final(self) -> FitResult:
        fit = self.stages[-1].fit
        assert fit is not None, "the last stage of a plan always trains"
        return fit

    @property
    def records(self) -> list[StageRecord]:
        return [stage.record for stage in self.stages]

    @property
    def train_time_s(self) -> float:
        return sum(stage.record.train_time_s for stage in self.stages)

    @property
    def extra_params(self) -> int:
        """Training-only parameters: the most any one stage added beside the student."""
        return max(stage.record.extra_params for stage in self.stages)

    def history(self) -> list[dict[str, Any]]:
        """Every stage's epochs in order; `epoch` counts on across stages, `stage`/`stage_epoch` say where.
        Side branches (checks) are left out: they are not part of the student's training."""
        rows, done = [], 0
        for stage in self.stages:
            if stage.fit is None or stage.record.branch:
                continue
            for row in stage.fit.history:
                rows.append(
                    {**row, "epoch": done + row["epoch"], "stage": stage.name, "stage_epoch": row["epoch"]}
                )
            done += stage.fit.epochs
        return rows


@dataclass
class StageInputs:
    """What a plan's stages read besides the networks: the data, the recipe's training section and its
    per-stage changes (`distill.stages.<method>`), and the artifacts loaded from other runs."""

    data: DataBundle
    train: TrainConfig
    stage_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: dict[str, Path] = field(default_factory=dict)  # artifact name -> file (another run's)


def run_plan(
    stages: list[Stage],
    student: nn.Module,
    teacher: nn.Module | None,
    options: Section,
    context: DistillContext,
    inputs: StageInputs,
    *,
    seed: int,
    folder: MethodFolder,
    device: torch.device,
    label: str,
    resume: bool,
    progress=None,
    parallel: Parallel | None = None,
) -> PlanResult:
    """Train `student` through `stages`; each stage starts from the state the previous one selected."""
    available: dict[str, StageArtifact] = {
        name: StageArtifact(name=name, path=str(path), sha256=file_sha256(path), origin="loaded")
        for name, path in inputs.loaded.items()
    }
    # What a stage that starts over (fresh_student) starts from: the student and the random state as the plan
    # received them (its objective's parts, e.g. DistPro's transforms, are drawn from that state, as the first
    # stage's are)
    initial_student = copy.deepcopy(student.state_dict())
    initial_random_state = torch.random.get_rng_state()
    results = []
    for resolved in resolve_stages(stages, inputs.train, inputs.stage_changes, inputs.loaded):
        stage = resolved.stage
        if resolved.skipped:
            results.append(skipped_stage(resolved, inputs))
            continue
        if stage.fresh_student:
            student.load_state_dict(initial_student)
            torch.random.set_rng_state(initial_random_state)
        before_branch = copy.deepcopy(student.state_dict()) if stage.branch else None
        result, produced = run_stage(
            resolved,
            student,
            teacher,
            options,
            context,
            inputs,
            available,
            run=StageRun(
                seed=seed,
                folder=folder,
                device=device,
                label=label if len(stages) == 1 else f"{label} {stage.name}",
                resume=resume,
                progress=progress,
                parallel=parallel,
            ),
        )
        available.update({artifact.name: artifact for artifact in produced})
        results.append(result)
        if before_branch is not None:
            student.load_state_dict(before_branch)
    return PlanResult(student, results)


@dataclass(frozen=True)
class StageRun:
    """How the stages of one plan run: the run's seed, folder, device, label, resume and progress."""

    seed: int
    folder: MethodFolder
    device: torch.device
    label: str
    resume: bool
    progress: Any = None
    parallel: Parallel | None = None  # a data-parallel run (torchrun), else None


def run_stage(
    resolved: ResolvedStage,
    student: nn.Module,
    teacher: nn.Module | None,
    options: Section,
    context: DistillContext,
    inputs: StageInputs,
    available: dict[str, StageArtifact],
    run: StageRun,
) -> tuple[StageResult, list[StageArtifact]]:
    """Build the stage's objective on the handed-on student, train it, save what it produces."""
    stage = resolved.stage
    if resolved.seed_index > 0:
        torch.manual_seed(construction_seed(run.seed, resolved.seed_index))
    consumed = [available[artifact.name] for artifact in stage.consumes]
    hand_on_student(stage, student, consumed)
    if stage.fresh_head:
        student.classifier.reset_parameters()
    objective = stage.objective(student, teacher, options, context)
    hand_on_objective(stage, objective, consumed)
    data = stage_data(stage, inputs.data, run.seed)
    selection = resolved.select
    trainer = Trainer(
        objective,
        data,
        resolved.train,
        seed=run.seed,
        out_dir=run.folder.stage(stage.name).path,
        device=run.device,
        label=run.label,
        progress=run.progress,
        select=selection,
        stage_index=resolved.seed_index,
        parallel=run.parallel,
    )
    fit = trainer.fit(resume=run.resume)
    produced = save_artifacts(stage, objective, run.folder.stage(stage.name), run.parallel)
    test_acc = None
    if stage.branch:
        test_acc = round(evaluate(student, data.eval_loader("test"), run.device)[0], 4)
    record = StageRecord(
        stage=stage.name,
        epochs=fit.epochs,
        select=fit.select,
        best_epoch=fit.best_epoch,
        best_val_acc=round(fit.best_val_acc, 4),
        best_score=None if fit.best_score is None else round(fit.best_score, 6),
        trained_params=sum(p.numel() for p in objective.trainable_parameters()),
        extra_params=objective.extra_parameter_count(),
        train_time_s=round(fit.train_time_s, 2),
        data=data_use(data, objective, selection, held_out=stage.view == "holdout"),
        produces=produced,
        consumes=consumed,
        notes=objective.stage_notes(),
        measures={k: round(v, 6) for k, v in objective.stage_measures(data, run.device).items()},
        branch=stage.branch,
        test_acc=test_acc,
    )
    return StageResult(record, fit), produced


def stage_data(stage: Stage, data: DataBundle, seed: int) -> DataBundle:
    """The images the stage reads (plan.py's DataView)."""
    return data.holdout(HOLDOUT_FRACTION, seed) if stage.view == "holdout" else data


def skipped_stage(resolved: ResolvedStage, inputs: StageInputs) -> StageResult:
    stage = resolved.stage
    sources = ", ".join(f"{a.name} from '{inputs.loaded[a.name]}'" for a in stage.produces)
    record = StageRecord(
        stage=stage.name,
        epochs=0,
        select=resolved.select,
        best_epoch=None,
        best_val_acc=None,
        best_score=None,
        trained_params=0,
        extra_params=0,
        train_time_s=0.0,
        data=DataUse(labelled_train=0, labelled_selection=0, unlabeled=0),
        skipped=f"not trained: its artifacts were loaded ({sources})",
    )
    return StageResult(record, None)


def data_use(data: DataBundle, objective: Distiller, selection: str, *, held_out: bool = False) -> DataUse:
    """The images a stage read: its labelled training images, the validation images its selection rule
    scored (none with `last`), and the unlabelled images when its objective has a label-free term. A
    `held_out` stage's "validation" images are training images it set aside (stage_data): they count as
    training images, never as selection images."""
    unlabeled = 0
    if data.unlabeled is not None and objective.learns_from_unlabeled:
        unlabeled = len(data.unlabeled)
    if held_out:
        return DataUse(
            labelled_train=len(data.train) + len(data.val),
            labelled_selection=0,
            unlabeled=unlabeled,
            held_out=len(data.val),
        )
    return DataUse(
        labelled_train=len(data.train),
        labelled_selection=len(data.val) if selection != "last" or objective.reads_validation_images else 0,
        unlabeled=unlabeled,
    )


def hand_on_student(stage: Stage, student: nn.Module, consumed: list[StageArtifact]) -> None:
    """Load the student's weights from the artifacts of kind "student" the stage consumes (before its fresh
    head: the head is new either way). Read as the recipe check read them (fitting_state): a file it
    accepted ({'state_dict': ...}, 'module.' keys) loads the same way."""
    for artifact, record in zip(stage.consumes, consumed, strict=True):
        if artifact.holds == "student":
            what, arch = f"artifact {artifact.name}", type(student).__name__
            student.load_state_dict(fitting_state(student, Path(record.path), what, arch))


def hand_on_objective(stage: Stage, objective: Distiller, consumed: list[StageArtifact]) -> None:
    for artifact, record in zip(stage.consumes, consumed, strict=True):
        if artifact.holds == "objective":
            payload = load_checkpoint(Path(record.path), f"artifact {artifact.name}")
            objective.use_artifact(artifact.name, payload)


def save_artifacts(
    stage: Stage, objective: Distiller, folder: StageFolder, parallel: Parallel | None = None
) -> list[StageArtifact]:
    """Write what the stage produces (from its selected state) into its folder; their records (under DDP
    rank 0 writes, and the others wait for the files before reading their digests)."""
    paths = [folder.artifact(artifact.file) for artifact in stage.produces]
    if is_main_process():
        for artifact, path in zip(stage.produces, paths, strict=True):
            save_checkpoint(artifact_payload(artifact, objective), path)
    if parallel is not None and paths:
        parallel.barrier()
    return [
        StageArtifact(name=artifact.name, path=str(path), sha256=file_sha256(path))
        for artifact, path in zip(stage.produces, paths, strict=True)
    ]


def artifact_payload(artifact: Artifact, objective: Distiller) -> dict:
    if artifact.holds == "student":
        return objective.student.state_dict()
    return objective.artifact(artifact.name)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PlannedStage:
    """How one stage of a method's plan spends epochs, as a build of the recipe will run it."""

    name: str
    epochs: int
    branch: bool  # a check beside the plan (plan.py): its epochs are extra, it hands nothing on
    skipped: bool  # its artifacts are loaded from another run (distill.artifacts)


def planned_epochs(recipe: Recipe, method: str) -> list[PlannedStage]:
    """Each stage of `method` (or variant) with the epochs it trains: the plan's split of train.epochs,
    changed by distill.stages, as the build resolves them (resolve.method_stages)."""
    return [
        PlannedStage(stage.name, stage.epochs, stage.stage.branch, stage.skipped)
        for stage in method_stages(recipe, method)
    ]


def describe_epochs(stages: list[PlannedStage]) -> str:
    """'hint 10 -> task 20 (30 epochs)'; a loaded stage says so, a check's epochs are counted apart."""
    parts, total, checks = [], 0, 0
    for stage in stages:
        if stage.skipped:
            parts.append(f"{stage.name} loaded")
        elif stage.branch:
            parts.append(f"[check {stage.epochs}]")
            checks += stage.epochs
        else:
            parts.append(f"{stage.name} {stage.epochs}")
            total += stage.epochs
    return f"{' -> '.join(parts)} ({total} epochs{f', checks {checks} more' if checks else ''})"
