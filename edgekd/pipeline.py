"""`edgekd build`: the run in order — prepare (prepare.py), evaluate the teacher, run each method's plan
per seed, deploy the students to ship (export.models), write the outputs — each step writing under the run
folder, resumable.

Everything that can reject the input (recipe, data, budget, teacher checkpoint, loaded artifacts) is checked
by `prepare` before the run folder is touched, so bad input leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from edgekd.data import DataBundle
from edgekd.deploy import QuantizationAwareSource, deploy, parity_error
from edgekd.distill import DistillContext, get_method
from edgekd.distill.registry import ResolvedMethod, resolve_method
from edgekd.evaluation import (
    SeedResult,
    add_paired_comparisons,
    budget_check,
    environment,
    penultimate_features,
    probe_records,
    score_model,
    student_data_summary,
    student_record,
    teacher_record,
    wants_embedding,
)
from edgekd.fileio import write_json
from edgekd.int8.stage import QuantizationAwareResult, train_quantization_aware
from edgekd.layout import RunLayout
from edgekd.models import count_flops, count_params, create_model
from edgekd.models.file_teacher import ExportedProgramTeacher, FileTeacher
from edgekd.prepare import (
    ModelChoice,
    Prepared,
    check_data_parallel,
    check_parallel_batches,
    check_teacher_batch,
    loaded_artifacts,
    prepare,
    seed_everything,
)
from edgekd.recipe import Recipe
from edgekd.records import (
    ArtifactRecord,
    Int8Record,
    ModelRecord,
    RunMetrics,
    RunRecord,
    StudentChoice,
)
from edgekd.runfolder import check_run_dir, delete_owned_folder, open_run_dir
from edgekd.runlock import run_folder_lock
from edgekd.runtime import split_arrays
from edgekd.shipping import ship, shipping_warnings
from edgekd.sizing.check import (
    BudgetExceeded,
    budget_summary,
    budget_target,
    latency_check,
    over_budget_text,
    with_latency,
)
from edgekd.train import FitResult, Trainer
from edgekd.train.checkpoint import save_checkpoint
from edgekd.train.dist import Parallel, is_main_process
from edgekd.train.dist import session as distributed_session
from edgekd.train.resolve import method_plan
from edgekd.train.stages import PlanResult, StageInputs, run_plan
from edgekd.train.syncbn import plain_batchnorm, synchronize_batchnorm

Histories = dict[str, list[dict[str, Any]]]
Embeddings = dict[str, tuple[np.ndarray, np.ndarray]]


def build(
    recipe: Recipe,
    *,
    resume: bool = False,
    force: bool = False,
    progress=None,
    strict_budget: bool = False,
) -> RunMetrics:
    """Run the recipe end to end and return its metrics (also written to the run folder as metrics.json).

    The run folder is locked for the whole build: a second build of the same folder (or its --force) is
    refused, naming the holder, before it writes anything. With ``strict_budget`` a deployed student over
    its budget fails the build (BudgetExceeded, exit 1) after the report is written."""
    started = time.perf_counter()
    # A folder that cannot be the run folder is refused before minutes of sizing or teacher training.
    check_run_dir(recipe, resume=resume, force=force)
    with distributed_session(recipe) as parallel:
        if parallel is not None:
            return build_parallel(recipe, parallel, started, resume=resume, force=force, progress=progress)
        p = prepare(recipe, say=sizing_progress(progress))
        with run_folder_lock(recipe.run_dir):
            layout = open_run_dir(recipe, resume=resume, force=force)
            return run(p, layout, started, resume=resume, progress=progress, strict_budget=strict_budget)


def check_parallel_build(recipe: Recipe, world: int, *, resume: bool, force: bool, say=None) -> None:
    """What `edgekd build --nproc` checks in one process before it starts any: that the batches split over
    the `world` processes and every stage it would train can train data-parallel, that the run folder can be
    opened as asked, and everything `edgekd validate` checks (prepare: data, budget, teacher checkpoint,
    loaded artifacts, memory). Nothing is written. Each process checks again as it starts; what changes in
    between (another build taking the folder) is refused there, as one line too (edgekd/launch.py)."""
    check_parallel_batches(recipe, world)
    check_data_parallel(recipe)
    check_run_dir(recipe, resume=resume, force=force)
    prepared = prepare(recipe, say=say)
    if recipe.teacher.train is not None:  # the teacher's own batch (its default rule needs the data)
        check_teacher_batch(prepared.teacher_data.batch_size, world)


def build_parallel(
    recipe: Recipe, parallel: Parallel, started: float, *, resume: bool, force: bool, progress
) -> RunMetrics | None:
    """One process of a torchrun launch: every process trains; rank 0 alone holds the run folder's lock,
    writes the folder and goes on to score, export, benchmark and report (it returns the metrics, the
    others None). --strict-budget is left to rank 0's report: the others are done before it is known."""
    p = prepare(recipe, say=sizing_progress(progress) if parallel.is_main else None, parallel=parallel)
    with contextlib.ExitStack() as held:

        def open_folder() -> RunLayout:
            held.enter_context(run_folder_lock(recipe.run_dir))
            return open_run_dir(recipe, resume=resume, force=force)

        layout = parallel.main_does(open_folder)
        if not parallel.is_main:
            train_only(p, layout, resume=resume, parallel=parallel)
            return None
        return run(p, layout, started, resume=resume, progress=progress, parallel=parallel)


def train_only(p: Prepared, layout: RunLayout, *, resume: bool, parallel: Parallel) -> None:
    """What a process other than rank 0 does: the same training calls as rank 0, in the same order (their
    collectives must line up), and nothing else."""
    train_teacher(p, layout, resume=resume, progress=None, parallel=parallel)
    for method in p.methods:
        for seed in p.seeds:
            train_student(p, layout, method, seed, resume=resume, progress=None, parallel=parallel)


def sizing_progress(progress):
    """A progress line per member a latency budget times (nothing without a display)."""
    from edgekd.sizing.latency_budget import progress_line

    return progress_line(progress, "sizing")


def run(
    p: Prepared,
    layout: RunLayout,
    started: float,
    *,
    resume: bool,
    progress,
    strict_budget: bool = False,
    parallel: Parallel | None = None,
) -> RunMetrics:
    recipe = p.recipe
    teacher, teacher_history = evaluate_teacher(
        p, layout, resume=resume, progress=progress, parallel=parallel
    )
    methods = [
        train_method(p, layout, name, resume=resume, progress=progress, parallel=parallel)
        for name in p.methods
    ]
    models = [teacher, *(method.record for method in methods), *probe_records(p, teacher, p.seeds)]
    add_paired_comparisons(models, recipe)
    release_worker_signal_handler()
    shipped = ship(recipe, models)
    by_name = {method.record.name: method for method in methods}
    artifacts, int8, int8_stage_histories = deploy_students(
        p, [by_name[name] for name in shipped.exported], layout, progress, resume=resume
    )
    deployed = by_name[shipped.model]
    check = budget_check(deployed.record, p.budget)
    if recipe.latency_budget is not None:
        own = [record for record in artifacts if record.model == shipped.model]
        check = with_latency(
            check,
            deployed.record.params,
            latency_check(recipe, own, deployed.student, image_shape(p), p.student_choice.sizing),
        )
    metrics = RunMetrics(
        run=RunRecord(
            name=recipe.name,
            seed=recipe.seed,
            student_seeds=p.seeds,
            device=str(p.device),
            wall_time_s=round(time.perf_counter() - started, 2),
            resumed=resume,
            mode=recipe.mode,
            distributed=parallel.describe() if parallel is not None else None,
        ),
        environment=environment(recipe.benchmark.threads),
        data={"teacher": p.teacher_data.summary(), "student": student_data_summary(p, p.seeds)},
        budget=budget_summary(recipe),
        student_choice=StudentChoice(**p.student_choice.__dict__),
        models=models,
        artifacts=artifacts,
        budget_check=check,
        shipped=shipped,
        int8=int8,
        warnings=shipping_warnings(recipe, models),
    )
    histories = {"teacher": teacher_history}
    embeddings: Embeddings = {}
    for method in methods:
        histories.update(method.histories)
        embeddings.update(method.embedding)
    histories.update(int8_stage_histories)
    write_outputs(layout, recipe, metrics, histories, embeddings)
    failed = parity_error(artifacts, "report written")
    if failed is None and strict_budget and check is not None and check.fits is False:
        failed = BudgetExceeded(
            f"--strict-budget: the deployed student is over its budget (report written): {over_budget_text(check)}"
        )
    if failed is not None:
        failed.results = metrics
        raise failed
    return metrics


# ---------------------------------------------------------------------------------------- the teacher
def evaluate_teacher(
    p: Prepared, layout: RunLayout, *, resume: bool, progress, parallel: Parallel | None = None
) -> tuple[ModelRecord, list[dict[str, Any]]]:
    """Train the teacher when the recipe asks for it, save it, and measure it (also on the student's task)."""
    fit = train_teacher(p, layout, resume=resume, progress=progress, parallel=parallel)
    p.teacher.to(p.device).eval()
    if isinstance(p.teacher, FileTeacher):  # the file is the teacher's record: nothing to save
        checkpoint, choice = p.teacher.path, file_teacher_choice(p.teacher)
    else:
        checkpoint = save_checkpoint(p.teacher.state_dict(), layout.model_weights("teacher"))
        choice = module_teacher_choice(p)
    record = teacher_record(p, choice, checkpoint, fit.best_epoch if fit else None, p.budget)
    return record, fit.history if fit else []


def module_teacher_choice(p: Prepared) -> ModelChoice:
    spec = p.teacher_data.input_spec
    return ModelChoice(
        p.recipe.teacher.model,
        dict(p.recipe.teacher.model_args),
        count_params(p.teacher),
        count_flops(p.teacher, (spec.channels, spec.height, spec.width)),
        "checkpoint" if p.recipe.teacher.checkpoint else "trained in the run",
    )


def file_teacher_choice(teacher: FileTeacher) -> ModelChoice:
    """A file teacher's record: its format as the architecture, the weights it stores as its parameters,
    and its FLOPs where they can be counted (a torch program runs torch operators; ONNX Runtime does not)."""
    flops = count_flops(teacher, teacher.input_shape) if isinstance(teacher, ExportedProgramTeacher) else None
    return ModelChoice(teacher.format_name, {"file": str(teacher.path)}, teacher.weight_count, flops, "file")


def train_teacher(
    p: Prepared, layout: RunLayout, *, resume: bool, progress, parallel: Parallel | None = None
) -> FitResult | None:
    """Train the teacher when the recipe asks for it; a loaded teacher is used as it is."""
    if p.recipe.teacher.train is None:
        return None
    context = DistillContext(p.teacher_data.num_classes, tuple(range(p.teacher_data.num_classes)))
    with synchronized_batchnorm(p.teacher, parallel):
        return fit_teacher(p, layout, context, resume=resume, progress=progress, parallel=parallel)


@contextlib.contextmanager
def synchronized_batchnorm(model: nn.Module, parallel: Parallel | None):
    """Under DDP with distributed.sync_batchnorm, `model`'s BatchNorm layers compute their statistics over
    the global batch for the block; they are plain BatchNorm layers again after it (for export and scoring).
    `model` must not be a BatchNorm itself (the layers are replaced in place)."""
    if parallel is None or not parallel.sync_batchnorm:
        yield model
        return
    synchronize_batchnorm(model, parallel.device)
    try:
        yield model
    finally:
        plain_batchnorm(model)


def fit_teacher(
    p: Prepared,
    layout: RunLayout,
    context: DistillContext,
    *,
    resume: bool,
    progress,
    parallel: Parallel | None,
) -> FitResult:
    distiller = get_method("scratch").distiller(p.teacher, None, get_method("scratch").options(), context)
    trainer = Trainer(
        distiller,
        p.teacher_data,
        p.recipe.teacher.train,
        seed=p.recipe.seed,
        out_dir=layout.teacher_training.path,
        device=p.device,
        label="teacher",
        progress=progress,
        parallel=parallel,
    )
    return trainer.fit(resume=resume)


# ------------------------------------------------------------------------------------------ the methods
@dataclass(frozen=True)
class MethodResult:
    """One method over every seed: its record, the first seed's student (the deployed one, for the main
    method), every seed's history, and the embedding plotted in the report (when asked for)."""

    record: ModelRecord
    student: nn.Module
    histories: Histories
    embedding: Embeddings


def train_method(
    p: Prepared, layout: RunLayout, method: str, *, resume: bool, progress, parallel: Parallel | None = None
) -> MethodResult:
    """Run one method's plan for every seed and measure each student."""
    recipe, several = p.recipe, len(p.seeds) > 1
    resolved = resolve_method(recipe.distill, method)
    runs, histories, embedding, first_student = [], {}, {}, None
    for seed in p.seeds:
        student, choice, plan = train_student(
            p, layout, method, seed, resume=resume, progress=progress, parallel=parallel
        )
        checkpoint = save_checkpoint(
            student.state_dict(), layout.model_weights(method, seed if several else None)
        )
        runs.append(
            SeedResult(
                seed=seed,
                choice=choice,
                scores=score_model(student, p.student_data_for(seed), p.device),
                checkpoint=checkpoint,
                best_epoch=plan.final.best_epoch,
                train_time_s=plan.train_time_s,
                stages=plan.records,
            )
        )
        histories[f"{method} seed{seed}" if several else method] = plan.history()
        if first_student is None:
            first_student, extra_params = student, plan.extra_params
            if wants_embedding(recipe, method):
                embedding[method] = penultimate_features(
                    student, p.student_data, p.device, recipe.report.embedding_points
                )
    record = student_record(
        method,
        resolved.entry.name,
        resolved.options.model_dump(mode="json"),
        runs,
        is_main=method == recipe.distill.method,
        extra_params=extra_params,
        uses_teacher=resolved.entry.distiller.uses_teacher,
        budget=p.budget,
    )
    return MethodResult(record, first_student, histories, embedding)


def train_student(
    p: Prepared,
    layout: RunLayout,
    method: str,
    seed: int,
    *,
    resume: bool,
    progress,
    folder=None,
    parallel: Parallel | None = None,
) -> tuple[nn.Module, ModelChoice, PlanResult]:
    """Train one method's student for one seed through the method's plan of stages (in `folder`, by default
    the run's train/<method>[/seed<k>]/)."""
    resolved = resolve_method(p.recipe.distill, method)
    data = p.student_data_for(seed)
    student = make_student(p, resolved, seed)
    context = student_context(p, data)
    folder = folder or layout.method(method, seed if len(p.seeds) > 1 else None)
    if is_main_process():
        write_json(folder.images, data.image_indices())
    inputs = StageInputs(
        data,
        p.recipe.train,
        stage_changes=p.recipe.distill.stages.get(method, {}),
        loaded=loaded_artifacts(p.recipe, method, seed),
    )
    with synchronized_batchnorm(student, parallel):
        result = run_plan(
            method_plan(p.recipe, method),
            student,
            p.teacher,
            resolved.options,
            context,
            inputs,
            seed=seed,
            folder=folder,
            device=p.device,
            label=method if len(p.seeds) == 1 else f"{method} seed {seed}",
            resume=resume,
            progress=progress,
            parallel=parallel,
        )
    return result.student, student_choice_of(p, resolved, student), result


def student_context(p: Prepared, data: DataBundle) -> DistillContext:
    """What an objective training a student on `data` knows of the run: its classes, the teacher's columns
    of them, the image shape."""
    spec = data.input_spec
    return DistillContext(
        data.num_classes,
        p.data_plan.teacher_positions(),
        input_shape=(spec.channels, spec.height, spec.width),
    )


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


# ----------------------------------------------------------------------------------------- deployment
def release_worker_signal_handler() -> None:
    """Training is over: drop the SIGCHLD handler torch's DataLoader installed for its workers.

    It outlives the workers, and an unrelated child process exiting later (a converter, a benchmark tool)
    can then crash the interpreter inside it.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def deploy_students(
    p: Prepared, exported: list[MethodResult], layout: RunLayout, progress, *, resume: bool = False
) -> tuple[list[ArtifactRecord], list[Int8Record], Histories]:
    """Export, check and time each exported student (the shipped one first), into one artifacts folder with
    file names that start with the method's name; the PyTorch rows alone when nothing is exported. Returns
    the records, per student with INT8 artifacts how they were quantized, and the quantization-aware
    stages' histories."""
    recipe = p.recipe
    task = None
    if progress is not None and (recipe.export.targets or recipe.benchmark.enabled):
        task = progress.add_task("export + benchmark", total=None)

    out_dir = layout.artifacts
    # A resumed run exports again: every artifact must come from the final student.
    delete_owned_folder(out_dir)
    quiet = progress is None or getattr(progress, "disable", False)
    # NNCF draws its own progress bars on stdout; --quiet means none at all.
    silence = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    records: list[ArtifactRecord] = []
    int8: list[Int8Record] = []
    histories: Histories = {}
    for index, method in enumerate(exported):
        name = method.record.name

        def say(text: str, name: str = name) -> None:
            if task is not None:
                prefix = f"{name}: " if len(exported) > 1 else ""
                progress.update(task, description=f"export + benchmark: {prefix}{text}")

        source = quantization_aware_source(p, layout, name, method.student, resume, progress)
        with silence:
            deployment = deploy(
                method.student,
                method.record.params,
                p.student_data,
                recipe.export,
                recipe.benchmark,
                out_dir,
                stem=name,
                say=say,
                also=budget_target(recipe) if index == 0 else None,
                quantization_aware=source,
            )
        for record in deployment.records:
            record.model = name
        records += deployment.records
        if deployment.int8 is not None:
            int8.append(deployment.int8)
        histories.update(int8_histories(name, method, source))
    if task is not None:
        progress.update(task, description="export + benchmark: done", total=1, completed=1)
    return records, int8, histories


def int8_histories(name: str, method: MethodResult, source: QuantizationAwareSource) -> Histories:
    """Each quantization-aware stage's epochs, numbered on after the deployed student's own (its first
    seed's), so the training curves show it as the stage it is."""
    own = next(iter(method.histories.values()), [])
    base = own[-1]["epoch"] if own else 0
    return {
        f"{name} int8 {mode}": [
            {**row, "epoch": base + row["epoch"], "stage": f"int8_{mode}", "stage_epoch": row["epoch"]}
            for row in result.history
        ]
        for mode, result in source.results.items()
    }


def quantization_aware_source(
    p: Prepared,
    layout: RunLayout,
    method: str,
    student: nn.Module,
    resume: bool,
    progress,
    seed: int | None = None,
) -> QuantizationAwareSource:
    """The quantization-aware stage of a method's student for `seed` (the deployed student's, the first
    seed, by default), run only when an INT8 path asks for it, once per mode, in the method's folder
    (train/<method>[/seed<k>]/int8_<mode>/)."""
    seed = p.seeds[0] if seed is None else seed
    data = p.student_data_for(seed)
    context = student_context(p, data)
    folder = layout.method(method, seed if len(p.seeds) > 1 else None)
    options = resolve_method(p.recipe.distill, method).options
    done: dict[str, QuantizationAwareResult] = {}

    def train(mode: str) -> QuantizationAwareResult:
        if mode not in done:
            calibration, _ = split_arrays(data, "train", p.recipe.export.calibration_images)
            done[mode] = train_quantization_aware(
                mode,
                student,
                p.teacher,
                data,
                p.recipe.train,
                p.recipe.export.int8,
                options,
                context,
                calibration,
                seed=seed,
                out_dir=folder.stage(f"int8_{mode}").path,
                device=p.device,
                label=method,
                resume=resume,
                progress=progress,
            )
        return done[mode]

    return QuantizationAwareSource(train, context.teacher_class_ids is not None, results=done)


def image_shape(p: Prepared) -> tuple[int, int, int]:
    spec = p.student_data.input_spec
    return (spec.channels, spec.height, spec.width)


# -------------------------------------------------------------------------------------------- outputs
def write_outputs(
    layout: RunLayout, recipe: Recipe, metrics: RunMetrics, histories: Histories, embeddings: Embeddings
) -> None:
    """metrics.json, history.json, the report (report.md, CSVs, plots) and DEPLOY.md."""
    from edgekd.deploy_guide import write_deploy_guide
    from edgekd.report.writer import write_report

    write_json(layout.metrics, metrics.to_json())
    write_json(layout.history, histories)
    write_report(layout, recipe, metrics, histories, embeddings)
    write_deploy_guide(layout, metrics.artifacts, metrics.shipped)
