"""The run's measurements of its models, as typed records (edgekd/records.py): accuracies on the student's
splits, embedding quality, what each model learnt from, and the paired comparisons over seeds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import edgekd
from edgekd.data import DataBundle
from edgekd.distill.embedding import clustering_nmi, embed_all
from edgekd.models.file_teacher import FileTeacher
from edgekd.prepare import ModelChoice, Prepared
from edgekd.probes import PROBES, probe_accuracies, teacher_embeddings
from edgekd.recipe import Recipe
from edgekd.records import BudgetCheck, LabelUse, ModelRecord, PairedDifference, SeedRun, StageRecord
from edgekd.report.stats import correct_verdicts, paired_difference
from edgekd.train import evaluate


@dataclass(frozen=True)
class Scores:
    """One model on one view of the data: top-1 (%) on val and test, test loss, and the NMI of its embedding."""

    val_acc: float
    test_acc: float
    test_loss: float
    test_nmi: float | None  # None: the model exposes no embedding (a teacher given as a file)


def score_model(model: nn.Module, data: DataBundle, device: torch.device) -> Scores:
    val_acc, _ = evaluate(model, data.eval_loader("val"), device)
    test_acc, test_loss = evaluate(model, data.eval_loader("test"), device)
    return Scores(
        round(val_acc, 4), round(test_acc, 4), round(test_loss, 6), embedding_nmi(model, data, device)
    )


def embedding_nmi(model: nn.Module, data: DataBundle, device: torch.device) -> float | None:
    """How well the embedding alone separates the test classes (k-means, k = classes): REFILLED's Table 4.
    A file teacher has no module whose input is its embedding: None."""
    if isinstance(model, FileTeacher):
        return None
    embeddings, labels = embed_all(model, data.eval_loader("test"), device)
    return round(clustering_nmi(embeddings, labels), 4)


def fits(params: int, budget: int | None) -> bool | None:
    return None if budget is None else params <= budget


# ------------------------------------------------------------------------------------------ the teacher
def teacher_record(
    p: Prepared, choice: ModelChoice, checkpoint: Path, best_epoch: int | None, budget: int | None
) -> ModelRecord:
    scores = score_model(p.teacher, p.teacher_data, p.device)
    on_student_val, on_student_test = teacher_on_student_task(p)
    loaded = p.recipe.teacher.train is None  # a checkpoint or a file, trained elsewhere
    # What a loaded teacher learnt from is not the run's to count: it is what the recipe states, or unknown.
    used = None if loaded else LabelUse(train=len(p.teacher_data.train), selection=len(p.teacher_data.val))
    return ModelRecord(
        name="teacher",
        role="teacher",
        arch=choice.arch,
        model_args=choice.model_args,
        params=choice.params,
        flops=choice.flops,
        val_acc=scores.val_acc,
        test_acc=scores.test_acc,
        test_loss=scores.test_loss,
        test_nmi=scores.test_nmi,
        fits_budget=fits(choice.params, budget),
        checkpoint=str(checkpoint),
        best_epoch=best_epoch,
        labelled_images=used,
        source=choice.how,
        trained_on=p.recipe.teacher.trained_on if loaded else None,
        student_task_val_acc=on_student_val,
        student_task_test_acc=on_student_test,
    )


def teacher_on_student_task(p: Prepared) -> tuple[float | None, float | None]:
    """The teacher's accuracy on the student's classes (its logits of those classes only); no meaning, hence
    None, when it has none of them (label relation 'disjoint')."""
    positions = p.data_plan.teacher_positions()
    if positions is None:
        return None, None
    data = p.student_data
    val_acc, _ = evaluate(p.teacher, data.eval_loader("val"), p.device, positions)
    test_acc, _ = evaluate(p.teacher, data.eval_loader("test"), p.device, positions)
    return round(val_acc, 4), round(test_acc, 4)


# ------------------------------------------------------------------------------------------ students
@dataclass(frozen=True)
class SeedResult:
    """One method's student trained for one seed, with its scores."""

    seed: int
    choice: ModelChoice
    scores: Scores
    checkpoint: Path
    best_epoch: int | None
    train_time_s: float
    stages: list[StageRecord]


def student_record(
    name: str,
    method: str,
    options: dict[str, Any],
    runs: list[SeedResult],
    *,
    is_main: bool,
    extra_params: int,
    uses_teacher: bool,
    budget: int | None,
) -> ModelRecord:
    """One record per method: accuracies as the mean over seeds (and their sample std with several), the first
    seed's weights, every seed's own figures in `per_seed`."""
    first, several = runs[0], len(runs) > 1
    choice = first.choice
    stages = first.stages
    record = ModelRecord(
        name=name,
        role="student",
        arch=choice.arch,
        model_args=choice.model_args,
        params=choice.params,
        flops=choice.flops,
        fits_budget=fits(choice.params, budget),
        checkpoint=str(first.checkpoint),
        best_epoch=None if several else first.best_epoch,
        train_time_s=round(sum(run.train_time_s for run in runs), 2),
        stages=stages,
        per_seed=[seed_run(run) for run in runs],
        method=method,
        options=options,
        is_main=is_main,
        extra_training_params=extra_params,
        # what the model learnt from: the most any of its stages read
        labelled_images=LabelUse(
            train=max(stage.data.labelled_train for stage in stages if stage.data),
            selection=max(stage.data.labelled_selection for stage in stages if stage.data),
        ),
        unlabeled_images=max(stage.data.unlabeled for stage in stages if stage.data),
        uses_teacher=uses_teacher,
        arch_source=choice.how,
        **mean_and_std(
            [run.scores.__dict__ for run in runs], ("val_acc", "test_acc", "test_loss", "test_nmi")
        ),
    )
    return record


def seed_run(run: SeedResult) -> SeedRun:
    return SeedRun(
        seed=run.seed,
        **run.scores.__dict__,
        best_epoch=run.best_epoch,
        checkpoint=str(run.checkpoint),
        stages=run.stages,
    )


def mean_and_std(per_seed: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """`key` = the mean over seeds, and with several seeds `key_std` = their sample std (ddof=1: the spread a
    new seed would show, not just these runs')."""
    if len(per_seed) == 1:  # one seed: its own figures as they are
        return {key: per_seed[0][key] for key in keys}
    summary: dict[str, float] = {}
    for key in keys:
        values = np.array([run[key] for run in per_seed], dtype=np.float64)
        summary[key] = round(float(values.mean()), 4)
        summary[f"{key}_std"] = round(float(values.std(ddof=1)), 4)
    return summary


# ------------------------------------------------------------------------------------------- probes
def probe_records(p: Prepared, teacher: ModelRecord, seeds: list[int]) -> list[ModelRecord]:
    """The teacher-embedding baselines (no student trained), per seed like the students. The teacher embeds
    each seed's images once; every probe classifies those embeddings."""
    probes = p.recipe.distill.probes
    per_seed: dict[str, list[SeedRun]] = {probe: [] for probe in probes}
    for seed in seeds if probes else []:
        data = p.student_data_for(seed)
        embeddings = teacher_embeddings(p.teacher, data, p.device)
        for probe in probes:
            scores = probe_accuracies(probe, p.teacher, data, p.device, embeddings)
            per_seed[probe].append(SeedRun(seed=seed, **{k: round(v, 4) for k, v in scores.items()}))
    return [probe_record(p, probe, teacher, runs) for probe, runs in per_seed.items()]


def probe_record(p: Prepared, probe: str, teacher: ModelRecord, per_seed: list[SeedRun]) -> ModelRecord:
    return ModelRecord(
        name=probe,
        role="probe",
        arch=PROBES[probe],
        model_args={},
        params=teacher.params,
        flops=teacher.flops,
        per_seed=per_seed,
        labelled_images=LabelUse(train=len(p.student_data.train), selection=len(p.student_data.val)),
        unlabeled_images=0,
        uses_teacher=True,
        **mean_and_std([run.model_dump() for run in per_seed], ("val_acc", "test_acc")),
    )


# --------------------------------------------------------------------------------------------- data
def teacher_on_unlabeled(p: Prepared, seeds: list[int]) -> dict[str, Any] | None:
    """How well the teacher knows the student's unlabelled images (top-1 over its own classes): near 100 %
    when they are its own training images, its generalization when they are new to it."""
    if p.student_data.unlabeled is None:
        return None
    per_seed = [evaluate(p.teacher, p.student_data_for(s).unlabeled_eval_loader(), p.device) for s in seeds]
    return {
        "teacher_acc": round(float(np.mean([acc for acc, _ in per_seed])), 4),
        "teacher_loss": round(float(np.mean([loss for _, loss in per_seed])), 6),
    }


def student_data_summary(p: Prepared, seeds: list[int]) -> dict[str, Any]:
    summary = p.student_data.summary()
    summary["draw_seeds"] = [p.data_plan.draw_seed(seed) for seed in seeds]
    if summary["unlabeled"]["images"]:
        summary["unlabeled"].update(teacher_on_unlabeled(p, seeds))
    return summary


# ------------------------------------------------------------------------------------------ comparisons
def add_paired_comparisons(records: list[ModelRecord], recipe: Recipe) -> None:
    """Every student's per-seed test accuracy minus the reference baseline's, with its interval."""
    reference_name = recipe.report.reference or "scratch"
    compared = {r.name: r for r in records if r.role in ("student", "probe")}
    reference = compared.get(reference_name)
    if reference is None:
        return
    report = recipe.report
    reference_values = per_seed_test_acc(reference)
    students = [record for name, record in compared.items() if name != reference_name]
    comparisons = [
        paired_difference(
            per_seed_test_acc(record),
            reference_values,
            reference_name=reference_name,
            confidence=report.confidence,
            method=report.interval,
        )
        for record in students
    ]
    correct_verdicts(comparisons, report.correction)
    for record, comparison in zip(students, comparisons, strict=True):
        record.paired = PairedDifference(**comparison)


def per_seed_test_acc(record: ModelRecord) -> dict[int, float]:
    return {run.seed: run.test_acc for run in record.per_seed}


def budget_check(main: ModelRecord, budget: int | None) -> BudgetCheck | None:
    if budget is None:
        return None
    return BudgetCheck(
        params=main.params, budget=budget, params_fit=main.params <= budget, fits=main.params <= budget
    )


def environment(threads: int | None) -> dict[str, Any]:
    """The machine and library versions every number of the run was measured with."""
    from edgekd.bench import environment_record

    return {
        "edgekd": edgekd.__version__,
        "torch_threads": torch.get_num_threads(),
        **environment_record(threads).to_dict(),
    }


# ------------------------------------------------------------------------------------- report inputs
def wants_embedding(recipe: Recipe, method: str) -> bool:
    return recipe.report.plots and recipe.report.embedding and method in (recipe.distill.method, "scratch")


@torch.no_grad()
def penultimate_features(
    model: nn.Module, data: DataBundle, device: torch.device, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's input (pooled features) on the first `limit` test images, with their labels."""
    captured: list[torch.Tensor] = []
    hook = model.classifier.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].cpu()))
    labels: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for images, batch_labels in data.eval_loader("test"):
            model(images.to(device))
            labels.append(batch_labels)
            if sum(len(b) for b in labels) >= limit:
                break
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).flatten(1)[:limit].numpy(), torch.cat(labels)[:limit].numpy()
