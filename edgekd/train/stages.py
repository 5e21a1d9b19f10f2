"""Running a method's plan: its stages in order, each a Trainer of its own, the student handed along.

Each stage trains in its own folder (`<out_dir>/<stage>/`). Under --resume a finished stage is not trained
again (its selected state is loaded) and the stage in progress continues after its last completed epoch, so
an interrupted plan ends bit for bit where an uninterrupted one does: every stage after the first starts
from a seed of its own, never from whatever random state the previous stage left behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.data import DataBundle
from edgekd.distill.base import DistillContext
from edgekd.distill.plan import Stage
from edgekd.recipe import TrainConfig
from edgekd.schema_base import Section
from edgekd.train.trainer import FitResult, Trainer, epoch_seed

# Seeds the construction of a later stage's objective (a fresh head, connectors): far from the epoch seeds.
_CONSTRUCTION_EPOCH = 999_983


@dataclass(frozen=True)
class StageResult:
    name: str
    fit: FitResult
    trained_params: int  # parameters the stage's optimizer updated
    extra_params: int  # parameters of the stage's objective outside the student (training-only: not exported)

    def record(self) -> dict[str, Any]:
        fit = self.fit
        return {
            "stage": self.name,
            "epochs": fit.epochs,
            "select": fit.select,
            "best_epoch": fit.best_epoch,
            "best_val_acc": round(fit.best_val_acc, 4),
            "best_score": None if fit.best_score is None else round(fit.best_score, 6),
            "trained_params": self.trained_params,
            "extra_params": self.extra_params,
            "train_time_s": round(fit.train_time_s, 2),
        }


@dataclass(frozen=True)
class PlanResult:
    student: nn.Module
    stages: list[StageResult]

    @property
    def final(self) -> FitResult:
        return self.stages[-1].fit

    @property
    def train_time_s(self) -> float:
        return sum(stage.fit.train_time_s for stage in self.stages)

    @property
    def extra_params(self) -> int:
        """Training-only parameters: the most any one stage added beside the student."""
        return max(stage.extra_params for stage in self.stages)

    def history(self) -> list[dict[str, Any]]:
        """Every stage's epochs in order; `epoch` counts on across stages, `stage`/`stage_epoch` say where."""
        rows, done = [], 0
        for stage in self.stages:
            for row in stage.fit.history:
                rows.append(
                    {**row, "epoch": done + row["epoch"], "stage": stage.name, "stage_epoch": row["epoch"]}
                )
            done += stage.fit.epochs
        return rows


def run_plan(
    stages: list[Stage],
    student: nn.Module,
    teacher: nn.Module | None,
    options: Section,
    context: DistillContext,
    data: DataBundle,
    train: TrainConfig,
    *,
    seed: int,
    out_dir: Path,
    device: torch.device,
    label: str,
    resume: bool,
    progress=None,
) -> PlanResult:
    """Train `student` through `stages`; each stage starts from the state the previous one selected."""
    results = []
    for index, stage in enumerate(stages):
        if index > 0:
            torch.manual_seed(epoch_seed(seed, _CONSTRUCTION_EPOCH, index))
        if stage.fresh_head:
            student.classifier.reset_parameters()
        objective = stage.objective(student, teacher, options, context)
        trainer = Trainer(
            objective,
            data,
            stage.train_config(train),
            seed=seed,
            out_dir=Path(out_dir) / stage.name,
            device=device,
            label=label if len(stages) == 1 else f"{label} {stage.name}",
            progress=progress,
            select=stage.selection(train),
            stage_index=index,
        )
        fit = trainer.fit(resume=resume)
        trained = sum(p.numel() for p in objective.trainable_parameters())
        results.append(StageResult(stage.name, fit, trained, objective.extra_parameter_count()))
    return PlanResult(student, results)
