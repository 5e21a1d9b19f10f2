"""`edgekd build`: the run's stages in order, each writing under the run folder, resumable.

Everything that can reject the input (recipe, data, budget, teacher checkpoint) is checked before the run
folder is touched, so bad input leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

import edgekd
from edgekd.bench import ParityError
from edgekd.data import DataBundle, DataPlan
from edgekd.deploy import ARTIFACTS_DIR, deploy, parity_failures
from edgekd.distill import DistillContext, get_method
from edgekd.distill.embedding import clustering_nmi, embed_all
from edgekd.distill.registry import ResolvedMethod, resolve_method
from edgekd.errors import CheckFailed, EdgekdError
from edgekd.fileio import read_json, write_json, write_text
from edgekd.models import count_flops, count_params, create_model, fit_to_budget
from edgekd.preflight import check_memory
from edgekd.probes import PROBES, probe_accuracies, teacher_embeddings
from edgekd.recipe import Recipe, dump_recipe
from edgekd.report.stats import paired_difference
from edgekd.runlock import run_folder_lock
from edgekd.train import FitResult, Trainer, evaluate
from edgekd.train.checkpoint import load_weights, save_checkpoint
from edgekd.train.dist import is_main_process
from edgekd.train.stages import PlanResult, run_plan

RECIPE_FILE = "recipe.yaml"
# The run folder's layout; version 2: every method's stages in train/<method>[/seed<k>]/<stage>/.
LAYOUT_FILE = "layout.json"
LAYOUT_VERSION = 2
# Per trained student: the pool indices of the images it trained and was selected on, for audits.
IMAGES_FILE = "images.json"


@dataclass(frozen=True)
class ModelChoice:
    """An architecture: zoo name and constructor arguments, with what budget fitting found out."""

    arch: str
    model_args: dict[str, Any]
    params: int
    flops: int
    how: str  # "budget fit among N members of family F" or "given by the recipe"

    def create(self, num_classes: int, in_channels: int) -> nn.Module:
        return create_model(self.arch, num_classes=num_classes, in_channels=in_channels, **self.model_args)


@dataclass
class Prepared:
    recipe: Recipe
    device: torch.device
    data_plan: DataPlan
    teacher_data: DataBundle
    student_data: DataBundle  # the first student seed's view (the deployed student's)
    teacher: nn.Module
    student_choice: ModelChoice
    started: float = field(default_factory=time.time)
    _student_views: dict[int, DataBundle] = field(default_factory=dict)

    def student_data_for(self, seed: int) -> DataBundle:
        """The student's view for one seed: its own few-shot, validation and unlabelled draws."""
        if seed not in self._student_views:
            self._student_views[seed] = self.data_plan.student(seed)
        return self._student_views[seed]


# ---------------------------------------------------------------------------------------------- setup
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise EdgekdError(
            "device: 'cuda' was asked for but no CUDA GPU is available (allowed here: auto, cpu)"
        )
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.device(wanted)


@contextlib.contextmanager
def blame(field: str):
    """Errors raised inside name the recipe field they come from (`teacher.model: model 'x' is unknown`)."""
    try:
        yield
    except EdgekdError as exc:
        message = str(exc)
        if message.startswith(f"{field}:") or isinstance(exc, CheckFailed):
            raise
        if message.startswith("model_args."):  # a model's option: `student.model_args.width: ...`
            raise EdgekdError(f"{field.rpartition('.')[0]}.{message}") from None
        raise EdgekdError(f"{field}: {message}") from None


def choose_student(recipe: Recipe, num_classes: int, input_shape: tuple[int, int, int]) -> ModelChoice:
    """The student's architecture: fitted to the budget, or the recipe's model, sized on the meta device."""
    channels, height, width = input_shape
    student = recipe.student
    if student.family is not None:
        fit = fit_to_budget(student.family, student.budget.params, num_classes, channels, (height, width))
        return ModelChoice(
            fit.model,
            dict(fit.model_args),
            fit.params,
            fit.flops,
            f"largest of {fit.candidates_considered} '{student.family}' members within the budget",
        )
    with blame("student.model"), torch.device("meta"):
        model = create_model(
            student.model, num_classes=num_classes, in_channels=channels, **student.model_args
        )
    return ModelChoice(
        student.model,
        dict(student.model_args),
        count_params(model),
        count_flops(model, input_shape),
        "given by the recipe",
    )


def check_methods(recipe: Recipe, relation: str) -> None:
    """Every method and baseline supports the run's label relation, and its plan of stages can be made."""
    distill = recipe.distill
    fields = ["distill.method", *(f"distill.baselines.{i}" for i in range(len(distill.baselines)))]
    for where, name in zip(fields, [distill.method, *distill.baselines], strict=True):
        resolved = resolve_method(distill, name)
        supported = resolved.entry.supported_relations(resolved.options)
        if relation not in supported:
            raise EdgekdError(
                f"{where}: '{name}' cannot distil across the label relation '{relation}' of teacher.classes and "
                f"data.classes (it supports: {', '.join(sorted(supported))})"
            )
        resolved.entry.plan(resolved.options, recipe.train)


def create_teacher(recipe: Recipe, num_classes: int, channels: int) -> nn.Module:
    with blame("teacher.model"):
        return create_model(
            recipe.teacher.model, num_classes=num_classes, in_channels=channels, **recipe.teacher.model_args
        )


def prepare(recipe: Recipe) -> Prepared:
    """Build everything that can fail on bad input, before anything is written.

    Cheap checks come first: the models are sized on the meta device and checked against the machine's
    memory before any image is processed or any weight allocated."""
    device = pick_device(recipe.device)
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    plan = DataPlan(recipe.data, recipe.teacher.classes)
    check_methods(recipe, plan.relation)
    shape, all_classes = plan.image_shape, len(plan.teacher_ids)
    student_choice = choose_student(recipe, len(plan.student_ids), shape)
    # the teacher is first built (on the meta device) here: a bad name or option fails before any memory sum
    check_memory(
        recipe,
        device,
        shape,
        lambda: create_teacher(recipe, all_classes, shape[0]),
        lambda: student_choice.create(len(plan.student_ids), shape[0]),
        student_choice.arch,
    )
    teacher_data = plan.teacher()
    # Every seed's draw is made now, so a draw that cannot be made fails before anything is written.
    student_views = {seed: plan.student(seed) for seed in recipe.student_seeds}
    student_data = student_views[recipe.student_seeds[0]]
    seed_everything(recipe.seed)
    teacher = create_teacher(recipe, all_classes, shape[0])
    if recipe.teacher.checkpoint is not None:
        load_weights(teacher, recipe.teacher.checkpoint, "teacher.checkpoint", recipe.teacher.model)
    return Prepared(
        recipe,
        device,
        plan,
        teacher_data,
        student_data,
        teacher,
        student_choice,
        _student_views=student_views,
    )


def open_run_dir(recipe: Recipe, *, resume: bool, force: bool) -> Path:
    run_dir = recipe.run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if resume:
            _check_same_recipe(run_dir, recipe)
            _check_layout(run_dir)
        elif force:
            shutil.rmtree(run_dir)
        else:
            raise EdgekdError(
                f"output: run folder '{run_dir}' already holds a run (use --resume to continue it, "
                "--force to start over, or --set name=... for a new one)"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / RECIPE_FILE, dump_recipe(recipe))
    write_json(run_dir / LAYOUT_FILE, {"layout": LAYOUT_VERSION})
    return run_dir


def _check_layout(run_dir: Path) -> None:
    """A folder of an older layout (before methods had stages: train/<method>/last.pt) cannot resume."""
    stored = read_json(run_dir / LAYOUT_FILE) if (run_dir / LAYOUT_FILE).is_file() else {}
    if stored.get("layout") != LAYOUT_VERSION:
        raise EdgekdError(
            f"--resume: '{run_dir}' was written by an older edgekd, before methods had stages "
            "(train/<method>/<stage>/); start it over with --force"
        )


def _check_same_recipe(run_dir: Path, recipe: Recipe) -> None:
    stored_file = run_dir / RECIPE_FILE
    if not stored_file.is_file():
        raise EdgekdError(f"--resume: '{run_dir}' has no {RECIPE_FILE}, so it is not an edgekd run folder")
    stored = with_current_defaults(yaml.safe_load(stored_file.read_text()))
    current = recipe.model_dump(mode="json")
    changed = _changed_fields(stored, current)
    if changed:
        raise EdgekdError(
            f"--resume: the recipe differs from the one that started '{run_dir}' in {', '.join(changed[:5])} "
            "(use --force to start over)"
        )


# Fields added after a run folder may have been written whose default is not what the older edgekd did: a
# stored recipe without them ran with these values (a resume with today's defaults must not mix the two).
LEGACY_BEHAVIOUR = {
    ("data", "last_batch"): "keep",
    ("data", "draws"): "fixed",
    ("distill", "finetune", "head"): "restricted",
    ("distill", "finetune", "trainable"): "all",
}


def with_current_defaults(stored: Any) -> Any:
    """The stored recipe with the fields this version added filled in, so a run started by an older edgekd
    still resumes: with what that version did (LEGACY_BEHAVIOUR) where today's default differs, else with
    the default. Kept as written when this version cannot read it (then it differs)."""
    if isinstance(stored, dict):
        stored = copy.deepcopy(stored)  # a copy to fill in
        for path, value in LEGACY_BEHAVIOUR.items():
            *parents, leaf = path
            node = stored
            for key in parents:
                node = node.setdefault(key, {}) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf not in node:
                node[leaf] = value
    try:
        return Recipe.model_validate(stored).model_dump(mode="json")
    except ValueError:
        return stored


def _changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            changed += _changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return changed
    return [] if old == new else [prefix.rstrip(".")]


# ---------------------------------------------------------------------------------------------- stages
def train_teacher(p: Prepared, run_dir: Path, *, resume: bool, progress) -> FitResult | None:
    """Train the teacher when the recipe asks for it; a loaded teacher is used as it is."""
    if p.recipe.teacher.train is None:
        return None
    context = DistillContext(p.teacher_data.num_classes, tuple(range(p.teacher_data.num_classes)))
    distiller = get_method("scratch").distiller(p.teacher, None, get_method("scratch").options(), context)
    trainer = Trainer(
        distiller,
        p.teacher_data,
        p.recipe.teacher.train,
        seed=p.recipe.seed,
        out_dir=run_dir / "train" / "teacher",
        device=p.device,
        label="teacher",
        progress=progress,
    )
    return trainer.fit(resume=resume)


def make_student(p: Prepared, resolved: ResolvedMethod, seed: int) -> nn.Module:
    """A fresh student for a method: every method starts from the same seeded initialization (a method that
    starts from the teacher gets a copy of it, whose head the method adapts)."""
    seed_everything(seed)
    spec, data = p.student_data.input_spec, p.student_data
    if not resolved.entry.student_from_teacher:
        return p.student_choice.create(data.num_classes, spec.channels)
    teacher_copy = create_model(
        p.recipe.teacher.model,
        num_classes=p.teacher_data.num_classes,
        in_channels=spec.channels,
        **p.recipe.teacher.model_args,
    )
    teacher_copy.load_state_dict(p.teacher.state_dict())
    return teacher_copy


def student_choice_of(p: Prepared, resolved: ResolvedMethod, student: nn.Module) -> ModelChoice:
    if not resolved.entry.student_from_teacher:
        return p.student_choice
    spec = p.student_data.input_spec
    return ModelChoice(
        p.recipe.teacher.model,
        dict(p.recipe.teacher.model_args),
        count_params(student),
        count_flops(student, (spec.channels, spec.height, spec.width)),
        "the teacher's architecture",
    )


def train_student(
    p: Prepared, method: str, seed: int, out_dir: Path, *, resume: bool, progress
) -> tuple[nn.Module, ModelChoice, PlanResult]:
    """Train one method's student for one seed through the method's plan of stages."""
    resolved = resolve_method(p.recipe.distill, method)
    data = p.student_data_for(seed)
    student = make_student(p, resolved, seed)
    spec = data.input_spec
    context = DistillContext(
        data.num_classes,
        p.data_plan.teacher_positions(),
        input_shape=(spec.channels, spec.height, spec.width),
    )
    choice = student_choice_of(p, resolved, student)
    if is_main_process():
        write_json(Path(out_dir) / IMAGES_FILE, data.image_indices())
    result = run_plan(
        resolved.entry.plan(resolved.options, p.recipe.train),
        student,
        p.teacher,
        resolved.options,
        context,
        data,
        p.recipe.train,
        seed=seed,
        out_dir=out_dir,
        device=p.device,
        label=method if len(p.recipe.student_seeds) == 1 else f"{method} seed {seed}",
        resume=resume,
        progress=progress,
    )
    return result.student, choice, result


# ---------------------------------------------------------------------------------------------- metrics
def model_record(
    name: str,
    role: str,
    model: nn.Module,
    choice: ModelChoice,
    data: DataBundle,
    device,
    budget: int | None,
    checkpoint: Path,
    class_index=None,
) -> dict[str, Any]:
    val_acc, _ = evaluate(model, data.eval_loader("val"), device, class_index)
    test_acc, test_loss = evaluate(model, data.eval_loader("test"), device, class_index)
    embeddings, labels = embed_all(model, data.eval_loader("test"), device)
    return {
        "name": name,
        "role": role,
        "arch": choice.arch,
        "model_args": choice.model_args,
        "params": choice.params,
        "flops": choice.flops,
        "val_acc": round(val_acc, 4),
        "test_acc": round(test_acc, 4),
        "test_loss": round(test_loss, 6),
        # how well the embedding alone separates the test classes (k-means, k = classes): REFILLED's Table 4
        "test_nmi": round(clustering_nmi(embeddings, labels), 4),
        "fits_budget": None if budget is None else choice.params <= budget,
        "checkpoint": str(checkpoint),
    }


def probe_records(p: Prepared, teacher_record: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    """The teacher-embedding baselines (no student trained), per seed like the students. The teacher embeds
    each seed's images once; every probe classifies those embeddings."""
    probes = p.recipe.distill.probes
    per_seed: dict[str, list[dict[str, Any]]] = {probe: [] for probe in probes}
    for seed in seeds if probes else []:
        data = p.student_data_for(seed)
        embeddings = teacher_embeddings(p.teacher, data, p.device)
        for probe in probes:
            scores = probe_accuracies(probe, p.teacher, data, p.device, embeddings)
            per_seed[probe].append({"seed": seed, **{k: round(v, 4) for k, v in scores.items()}})
    return [probe_record(p, probe, teacher_record, runs) for probe, runs in per_seed.items()]


def probe_record(
    p: Prepared, probe: str, teacher_record: dict[str, Any], per_seed: list[dict[str, Any]]
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": probe,
        "role": "probe",
        "arch": PROBES[probe],
        "model_args": {},
        "params": teacher_record["params"],
        "flops": teacher_record["flops"],
        "fits_budget": None,
        "best_epoch": None,
        "per_seed": per_seed,
        "labelled_images": labels_used(p.recipe, p.student_data),
        "unlabeled_images": 0,
        "uses_teacher": True,
    }
    for key in ("val_acc", "test_acc"):
        values = np.array([run[key] for run in per_seed], dtype=np.float64)
        record[key] = round(float(values.mean()), 4)
        if len(per_seed) > 1:
            record[f"{key}_std"] = round(float(values.std(ddof=1)), 4)
    return record


def teacher_on_student_task(
    p: Prepared, choice: ModelChoice, budget: int | None, checkpoint: Path
) -> dict[str, Any]:
    """The teacher's accuracy on the student's classes (its logits of those classes only); no meaning, hence
    None, when it has none of them (label relation 'disjoint')."""
    positions = p.data_plan.teacher_positions()
    if positions is None:
        return {"val_acc": None, "test_acc": None}
    data = p.student_data
    val_acc, _ = evaluate(p.teacher, data.eval_loader("val"), p.device, positions)
    test_acc, _ = evaluate(p.teacher, data.eval_loader("test"), p.device, positions)
    return {"val_acc": round(val_acc, 4), "test_acc": round(test_acc, 4)}


def unlabeled_images_used(data: DataBundle, resolved: ResolvedMethod) -> int:
    """How many unlabelled images a method trained on: none for methods without a label-free term."""
    if data.unlabeled is None or not resolved.entry.distiller.learns_from_unlabeled:
        return 0
    return len(data.unlabeled)


def labels_used(recipe: Recipe, data: DataBundle) -> dict[str, int]:
    """Labelled images a student's training and its model selection used (selection: none with `last`)."""
    return {
        "train": len(data.train),
        "selection": len(data.val) if recipe.train.select == "best_val" else 0,
    }


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


def student_data_summary(p: Prepared, seeds: list[int]) -> dict[str, Any]:
    summary = p.student_data.summary()
    summary["draw_seeds"] = [p.data_plan.draw_seed(seed) for seed in seeds]
    if summary["unlabeled"]["images"]:
        summary["unlabeled"].update(teacher_on_unlabeled(p, seeds))
    return summary


def add_paired_comparisons(records: list[dict[str, Any]], recipe: Recipe) -> None:
    """Every student's per-seed test accuracy minus the reference baseline's, with its interval."""
    reference_name = recipe.report.reference or "scratch"
    students = {r["name"]: r for r in records if r["role"] in ("student", "probe")}
    reference = students.get(reference_name)
    if reference is None:
        return
    report = recipe.report
    reference_values = per_seed_values(reference, "test_acc")
    for name, record in students.items():
        if name == reference_name:
            continue
        record["paired"] = paired_difference(
            per_seed_values(record, "test_acc"),
            reference_values,
            reference_name=reference_name,
            confidence=report.confidence,
            method=report.interval,
        )


def per_seed_values(record: dict[str, Any], key: str) -> dict[int, float]:
    runs = record.get("per_seed") or [record]
    return {run["seed"]: run[key] for run in runs}


def seed_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One record per method: the first seed's fields, accuracies as mean (and std over seeds)."""
    record = {key: value for key, value in per_seed[0].items() if key not in ("seed",)}
    if len(per_seed) == 1:
        record["per_seed"] = [{key: per_seed[0][key] for key in ("seed", "val_acc", "test_acc", "test_nmi")}]
        return record
    for key in ("val_acc", "test_acc", "test_loss", "test_nmi"):
        values = np.array([run[key] for run in per_seed], dtype=np.float64)
        record[key] = round(float(values.mean()), 4)
        # Sample std (ddof=1): the spread a new seed would show, not just these runs'.
        record[f"{key}_std"] = round(float(values.std(ddof=1)), 4)
    record["best_epoch"] = None
    record["checkpoint"] = per_seed[0]["checkpoint"]
    record["train_time_s"] = round(sum(run["train_time_s"] for run in per_seed), 2)
    record["per_seed"] = [
        {
            key: run[key]
            for key in (
                "seed",
                "val_acc",
                "test_acc",
                "test_loss",
                "test_nmi",
                "best_epoch",
                "checkpoint",
                "stages",
            )
        }
        for run in per_seed
    ]
    return record


def environment(threads: int | None) -> dict[str, Any]:
    """The machine and library versions every number of the run was measured with."""
    from edgekd.bench import environment_record

    return {
        "edgekd": edgekd.__version__,
        "torch_threads": torch.get_num_threads(),
        **environment_record(threads).to_dict(),
    }


def build(recipe: Recipe, *, resume: bool = False, force: bool = False, progress=None) -> dict[str, Any]:
    """Run the recipe end to end and return metrics.json's content (also written to the run folder).

    The run folder is locked for the whole build: a second build of the same folder (or its --force) is
    refused, naming the holder, before it writes anything."""
    started = time.perf_counter()
    p = prepare(recipe)
    with run_folder_lock(recipe.run_dir):
        return _build_locked(p, recipe, started, resume=resume, force=force, progress=progress)


def _build_locked(p: Prepared, recipe: Recipe, started: float, *, resume: bool, force: bool, progress):
    run_dir = open_run_dir(recipe, resume=resume, force=force)
    budget = recipe.student.budget.params if recipe.student.budget else None
    spec = p.teacher_data.input_spec
    models_dir = run_dir / "models"

    teacher_fit = train_teacher(p, run_dir, resume=resume, progress=progress)
    p.teacher.to(p.device).eval()
    teacher_ckpt = save_checkpoint(p.teacher.state_dict(), models_dir / "teacher.pt")
    teacher_choice = ModelChoice(
        recipe.teacher.model,
        dict(recipe.teacher.model_args),
        count_params(p.teacher),
        count_flops(p.teacher, (spec.channels, spec.height, spec.width)),
        "checkpoint" if recipe.teacher.checkpoint else "trained in the run",
    )
    teacher_record = model_record(
        "teacher", "teacher", p.teacher, teacher_choice, p.teacher_data, p.device, budget, teacher_ckpt
    )
    on_student = teacher_on_student_task(p, teacher_choice, budget, teacher_ckpt)
    teacher_record.update(
        labelled_images={"train": len(p.teacher_data.train), "selection": len(p.teacher_data.val)},
        student_task_val_acc=on_student["val_acc"],
        student_task_test_acc=on_student["test_acc"],
        source=teacher_choice.how,
        best_epoch=teacher_fit.best_epoch if teacher_fit else None,
    )
    records, histories = [teacher_record], {"teacher": teacher_fit.history if teacher_fit else []}

    seeds = recipe.student_seeds
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for method in [recipe.distill.method, *recipe.distill.baselines]:
        per_seed = []
        for seed in seeds:
            tag = "" if len(seeds) == 1 else f"_seed{seed}"
            out_dir = run_dir / "train" / (method if len(seeds) == 1 else f"{method}/seed{seed}")
            student, choice, plan = train_student(p, method, seed, out_dir, resume=resume, progress=progress)
            extra = plan.extra_params
            data = p.student_data_for(seed)
            ckpt = save_checkpoint(student.state_dict(), models_dir / f"{method}{tag}.pt")
            record = model_record(method, "student", student, choice, data, p.device, budget, ckpt)
            record.update(
                seed=seed,
                best_epoch=plan.final.best_epoch,
                train_time_s=round(plan.train_time_s, 2),
                stages=[stage.record() for stage in plan.stages],
            )
            per_seed.append(record)
            histories[method + tag.replace("_", " ")] = plan.history()
            if method == recipe.distill.method and seed == seeds[0]:
                main_student, main_params = student, choice.params
            if seed == seeds[0] and wants_embedding(recipe, method):
                embeddings[method] = penultimate_features(
                    student, p.student_data, p.device, recipe.report.embedding_points
                )
        resolved = resolve_method(recipe.distill, method)
        record = seed_summary(per_seed)
        record.update(
            method=resolved.entry.name,
            options=resolved.options.model_dump(mode="json"),
            is_main=method == recipe.distill.method,
            extra_training_params=extra,
            labelled_images=labels_used(recipe, p.student_data),
            unlabeled_images=unlabeled_images_used(p.student_data, resolved),
            uses_teacher=resolved.entry.distiller.uses_teacher,
            arch_source=choice.how,
        )
        records.append(record)
    records += probe_records(p, teacher_record, seeds)
    add_paired_comparisons(records, recipe)

    release_worker_signal_handler()
    artifacts = deploy_main_student(p, main_student, main_params, run_dir, progress)
    metrics = {
        "run": {
            "name": recipe.name,
            "seed": recipe.seed,
            "student_seeds": seeds,
            "device": str(p.device),
            "wall_time_s": round(time.perf_counter() - started, 2),
            "resumed": resume,
        },
        "environment": environment(recipe.benchmark.threads),
        "data": {"teacher": p.teacher_data.summary(), "student": student_data_summary(p, seeds)},
        "budget": {"params": budget},
        "student_choice": {
            "arch": p.student_choice.arch,
            "model_args": p.student_choice.model_args,
            "params": p.student_choice.params,
            "flops": p.student_choice.flops,
            "how": p.student_choice.how,
        },
        "models": records,
        "artifacts": artifacts,
        "budget_check": budget_check(records, budget),
    }
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "history.json", histories)
    from edgekd.report import write_report

    write_report(run_dir, recipe, metrics, histories, embeddings)
    failures = parity_failures(artifacts)
    if failures:
        raise ParityError(
            f"parity: {len(failures)} artifact(s) outside tolerance (report written): " + "; ".join(failures)
        )
    return metrics


def release_worker_signal_handler() -> None:
    """Training is over: drop the SIGCHLD handler torch's DataLoader installed for its workers.

    It outlives the workers, and an unrelated child process exiting later (a converter, a benchmark tool)
    can then crash the interpreter inside it.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def deploy_main_student(
    p: Prepared, student: nn.Module, params: int, run_dir: Path, progress
) -> list[dict[str, Any]]:
    """Export, check and time the shipped model; the PyTorch row alone when nothing is exported."""
    recipe = p.recipe
    task = None
    if progress is not None and (recipe.export.targets or recipe.benchmark.enabled):
        task = progress.add_task("export + benchmark", total=None)

    def say(text: str) -> None:
        if task is not None:
            progress.update(task, description=f"export + benchmark: {text}")

    out_dir = run_dir / ARTIFACTS_DIR
    if out_dir.exists():  # a resumed run exports again: every artifact must come from the final student
        shutil.rmtree(out_dir)
    quiet = progress is None or getattr(progress, "disable", False)
    # NNCF draws its own progress bars on stdout; --quiet means none at all.
    silence = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    with silence:
        artifacts = deploy(
            student,
            params,
            p.student_data,
            recipe.export,
            recipe.benchmark,
            out_dir,
            stem=recipe.distill.method,
            say=say,
        )
    if task is not None:
        progress.update(task, description="export + benchmark: done", total=1, completed=1)
    return artifacts


def budget_check(records: list[dict[str, Any]], budget: int | None) -> dict[str, Any] | None:
    main = next(record for record in records if record.get("is_main"))
    if budget is None:
        return None
    return {"params": main["params"], "budget": budget, "fits": main["params"] <= budget}
