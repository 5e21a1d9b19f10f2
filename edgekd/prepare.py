"""Everything a build needs, checked before anything is written: the recipe's device, data views, label
relation, the methods' plans, the student's architecture (fitted to the budget), the memory floor and the
teacher.

Cheap checks come first: the models are sized on the meta device and checked against the machine's memory
before any image is processed or any weight allocated. Bad input here leaves no run folder behind.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.data import DataBundle, DataPlan
from edgekd.distill.plan import Networks, Stage, check_payload, produced_artifacts
from edgekd.distill.registry import resolve_method
from edgekd.errors import CheckFailed, EdgekdError, RecipeError
from edgekd.models import count_flops, count_params, create_model, fit_to_budget
from edgekd.models.file_teacher import FileTeacher, check_teacher_fits, load_teacher_file
from edgekd.preflight import check_benchmark_devices, check_memory
from edgekd.recipe import Recipe
from edgekd.records import Sizing
from edgekd.train.checkpoint import checkpoint_input_channels, fitting_state, load_checkpoint, load_weights
from edgekd.train.dist import Parallel
from edgekd.train.resolve import method_plan, method_stages


@dataclass(frozen=True)
class ModelChoice:
    """An architecture: zoo name and constructor arguments, with what budget fitting found out."""

    arch: str
    model_args: dict[str, Any]
    params: int
    flops: int | None  # None: not counted (a teacher given as an ONNX file)
    how: str  # "budget fit among N members of family F" or "given by the recipe"
    sizing: Sizing | None = None  # how a latency budget chose it: the candidate table

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
    _student_views: dict[int, DataBundle] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """What the run trains: the main method first, then the baselines."""
        return [self.recipe.distill.method, *self.recipe.distill.baselines]

    @property
    def seeds(self) -> list[int]:
        return self.recipe.student_seeds

    @property
    def budget(self) -> int | None:
        """The parameter limit, if the recipe sets one."""
        budget = self.recipe.student.budget
        return budget.params if budget else None

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


def check_parallel_batches(recipe: Recipe, world: int) -> None:
    """data.batch_size is the global batch: it must split evenly over the processes."""
    sizes = {
        "data.batch_size": recipe.data.batch_size,
        "data.unlabeled_batch_size": recipe.data.unlabeled_batch_size,
    }
    for name, size in sizes.items():
        if size is not None and size % world:
            raise RecipeError(
                name,
                f"{size} images do not split evenly over {world} processes (it is the global batch; "
                f"allowed: a multiple of {world})",
            )


def check_data_parallel(recipe: Recipe) -> None:
    """Every stage a data-parallel build would train can train data-parallel: one that cannot (DistPro's
    search) is refused before anything trains, unless the recipe loads what it produces (then it is
    skipped)."""
    for where, name in named_methods(recipe):
        for resolved in method_stages(recipe, name):
            stage = resolved.stage
            why = stage.objective.not_data_parallel
            if why and not resolved.skipped:
                raise EdgekdError(
                    f"{where}: '{name}' cannot train data-parallel (--nproc): its stage '{stage.name}' "
                    f"{why}; {serial_stage_fix(name, stage)}"
                )


def serial_stage_fix(method: str, stage: Stage) -> str:
    """What a user can do about a stage that cannot train data-parallel."""
    if not stage.produces:
        return "build it without --nproc"
    fields = ", ".join(f"distill.artifacts.{method}.{artifact.name}" for artifact in stage.produces)
    return (
        "build it without --nproc, or train that stage in a one-process run and load what it produces "
        f"({fields})"
    )


def check_teacher_batch(batch_size: int, world: int) -> None:
    """The teacher's batch (its own, or the default rule's) is global too: it must split evenly."""
    if batch_size % world:
        raise RecipeError(
            "teacher.train.batch_size",
            f"the teacher's batch of {batch_size} images does not split evenly over {world} processes "
            f"(allowed: set teacher.train.batch_size to a multiple of {world})",
        )


def pick_device(wanted: str, mode: str = "deterministic") -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise EdgekdError(
            "device: 'cuda' was asked for but no CUDA GPU is available (allowed here: auto, cpu)"
        )
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    set_compute_mode(mode)
    return torch.device(wanted)


def set_compute_mode(mode: str) -> None:
    """deterministic: cuDNN autotuning off, deterministic algorithms on (warn where an op has none); speed:
    cuDNN picks the fastest kernels by trying them, non-deterministic ones allowed."""
    deterministic = mode == "deterministic"
    if deterministic:  # cuBLAS is deterministic only with a fixed workspace (read when CUDA starts)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@contextlib.contextmanager
def blame(field: str):
    """Errors raised inside name the recipe field they come from (`teacher.model: model 'x' is unknown`)."""
    try:
        yield
    except EdgekdError as exc:
        message = str(exc)
        if message.startswith((f"{field}:", f"{field}.")) or isinstance(exc, CheckFailed):
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
    params = count_params(model)
    limit = student.budget.params if student.budget is not None else None
    if limit is not None and params > limit:
        # The recipe contradicts itself: known now, not after the student has trained.
        raise EdgekdError(
            f"student.model: {student.model}{f' {student.model_args}' if student.model_args else ''} has "
            f"{params:,} parameters, over "
            f"student.budget.params ({limit:,}); allowed: a model within the budget, `family:` to size one "
            "to it, or no params budget"
        )
    return ModelChoice(
        student.model,
        dict(student.model_args),
        params,
        count_flops(model, input_shape),
        "given by the recipe",
    )


def choose_student_for_latency(
    recipe: Recipe, data: DataBundle, device: torch.device, say=None
) -> ModelChoice:
    """The family member a latency budget (and its rule) chooses, timed on the target runtime."""
    from edgekd.sizing import size_to_latency

    with blame("student.budget.latency"):
        (name, model_args), sizing = size_to_latency(recipe, data, device, say)
    spec = data.input_spec
    with torch.device("meta"):
        model = create_model(name, num_classes=data.num_classes, in_channels=spec.channels, **model_args)
    budget = recipe.latency_budget
    rule = (
        "most parameters"
        if budget.rule == "largest"
        else f"best of {budget.proxy.candidates} by proxy training"
    )
    return ModelChoice(
        name,
        dict(model_args),
        count_params(model),
        count_flops(model, (spec.channels, spec.height, spec.width)),
        f"{rule} among the '{recipe.student.family}' members within "
        f"{budget.describe(recipe.latency_threads)}",
        sizing=sizing,
    )


def named_methods(recipe: Recipe) -> list[tuple[str, str]]:
    """(recipe field, method or variant name) of the main method and every baseline."""
    distill = recipe.distill
    fields = ["distill.method", *(f"distill.baselines.{i}" for i in range(len(distill.baselines)))]
    return list(zip(fields, [distill.method, *distill.baselines], strict=True))


def check_methods(recipe: Recipe, relation: str) -> None:
    """Every method and baseline supports the run's label relation, and its plan of stages can be made."""
    distill = recipe.distill
    for where, name in named_methods(recipe):
        resolved = resolve_method(distill, name)
        supported = resolved.entry.supported_relations(resolved.options)
        if relation not in supported:
            raise EdgekdError(
                f"{where}: '{name}' cannot distil across the label relation '{relation}' of teacher.classes and "
                f"data.classes (it supports: {', '.join(sorted(supported))})"
            )
        check_stage_names(recipe, name, method_plan(recipe, name))


def check_int8_mode(recipe: Recipe, relation: str) -> None:
    """QAD distils from the teacher's logits of the student's classes: a teacher without them cannot
    (auto then takes QAT as its quantization-aware step)."""
    int8 = recipe.export.int8
    wants_int8 = recipe.export.wants_int8
    if wants_int8 and int8.trains and compiler_missing():
        raise EdgekdError(
            f"export.int8.mode: '{int8.mode}' trains with NNCF's quantization kernels, which compile on first use "
            "with a C++ compiler, and none was found (c++, or $CXX); install one (e.g. apt install g++) or use "
            "ptq or accuracy_control"
        )
    if wants_int8 and int8.mode == "qad" and relation == "disjoint":
        raise EdgekdError(
            "export.int8.mode: 'qad' needs a teacher that predicts the student's classes; this run's teacher "
            "has none of them (label relation 'disjoint'); allowed here: ptq, accuracy_control, qat, auto"
        )


def compiler_missing() -> bool:
    """No C++ compiler for torch's extension builds (it runs $CXX, else c++)."""
    import shutil

    return shutil.which(os.environ.get("CXX", "c++")) is None


def check_stage_names(recipe: Recipe, method: str, stages: list[Stage]) -> None:
    """distill.stages and distill.artifacts name stages and artifacts of the method's plan."""
    names = [stage.name for stage in stages]
    for stage in recipe.distill.stages.get(method, {}):
        if stage not in names:
            raise EdgekdError(
                f"distill.stages.{method}.{stage}: '{method}' has no stage '{stage}' (its stages: {', '.join(names)})"
            )
    produced = produced_artifacts(stages)
    for artifact in recipe.distill.artifacts.get(method, {}):
        if artifact not in produced:
            raise EdgekdError(
                f"distill.artifacts.{method}.{artifact}: '{method}' produces no artifact '{artifact}' "
                f"(it produces: {', '.join(produced) or 'none'})"
            )


def loaded_artifacts(recipe: Recipe, method: str, seed: int) -> dict[str, Path]:
    """The artifacts a method loads from other runs for one seed ('{seed}' in a path is the seed)."""
    return {
        name: Path(str(path).replace("{seed}", str(seed)))
        for name, path in recipe.distill.artifacts.get(method, {}).items()
    }


def check_loaded_artifacts(
    recipe: Recipe, student: ModelChoice, plan: DataPlan, teacher: nn.Module | None = None
) -> None:
    """Every artifact to load exists for every seed and holds what its kind declares: student weights that
    fit the student (checked on the meta device: nothing is allocated), or a payload of the declared
    structure that agrees with the method's options and networks (plan.py's Artifact). With `teacher`, the
    run's teacher with its final weights (a checkpoint's), what depends on them is checked too."""
    for method in recipe.distill.artifacts:
        resolved = resolve_method(recipe.distill, method)
        produced = produced_artifacts(method_plan(recipe, method))
        networks = MethodNetworks(recipe, resolved.entry.student_from_teacher, student, plan, teacher)
        for seed in recipe.student_seeds:
            for name, path in loaded_artifacts(recipe, method, seed).items():
                field = f"distill.artifacts.{method}.{name}"
                if not path.is_file():
                    raise EdgekdError(
                        f"{field}: '{path}' does not exist (seed {seed}); allowed: an artifact file"
                    )
                if produced[name].holds == "student":
                    fitting_state(networks.student(), path, field, networks.student_arch)
                    continue
                artifact, where = produced[name], f"{field} ('{path}')"
                payload = load_checkpoint(path, field)
                check_payload(artifact, payload, resolved.options, where)
                if artifact.fits is not None:
                    artifact.fits(payload, networks.both(), resolved.options, where)


class MethodNetworks:
    """A method's teacher and student as the recipe builds them, on the meta device (shapes and taps are
    known; no weight is allocated), built when first asked for; or the run's teacher when given."""

    def __init__(
        self,
        recipe: Recipe,
        student_from_teacher: bool,
        student: ModelChoice,
        plan: DataPlan,
        teacher: nn.Module | None = None,
    ):
        self.recipe, self.plan, self.teacher = recipe, plan, teacher
        self.student_arch, self.student_args = student.arch, student.model_args
        self.student_classes = len(plan.student_ids)
        if student_from_teacher:
            self.student_arch, self.student_args = recipe.teacher.model, recipe.teacher.model_args
            self.student_classes = len(plan.teacher_ids)
        self._built: Networks | None = None

    def student(self) -> nn.Module:
        return self.both().student

    def both(self) -> Networks:
        if self._built is None:
            channels = self.plan.image_shape[0]
            with torch.device("meta"):
                student = create_model(self.student_arch, self.student_classes, channels, **self.student_args)
                teacher = self.teacher
                if teacher is None:
                    teacher = create_teacher(self.recipe, len(self.plan.teacher_ids), channels)
            self._built = Networks(teacher, student, self.plan.image_shape, self.teacher is not None)
        return self._built


def check_file_teacher_methods(recipe: Recipe) -> None:
    """A teacher given as a file has logits and no modules: every method, baseline and probe must need
    nothing else of it (refused here, before anything is loaded or trained)."""
    path = recipe.teacher.file
    if path is None:
        return
    for where, name in named_methods(recipe):
        entry = resolve_method(recipe.distill, name).entry
        if not entry.logits_only:
            raise EdgekdError(
                f"{where}: '{name}' needs the teacher's module (its features, embedding or weights), which "
                f"teacher.file '{path.name}' does not expose; allowed with a file teacher: "
                f"{', '.join(logits_only_methods())}"
            )
    if recipe.distill.probes:
        raise EdgekdError(
            f"distill.probes: '{recipe.distill.probes[0]}' classifies the teacher's embedding, which "
            f"teacher.file '{path.name}' does not expose; allowed with a file teacher: no probes"
        )


def logits_only_methods() -> list[str]:
    from edgekd.distill.catalog import CATALOG

    return [name for name, entry in CATALOG.items() if entry.logits_only]


class WeightsOnly(nn.Module):
    """A file teacher's stand-in for the memory check (built on the meta device): its weights, and logits
    as output. Its activations are not known from the file, so only the weights and logits are counted."""

    def __init__(self, weights: int, num_classes: int):
        super().__init__()
        self.weights = nn.Parameter(torch.empty(weights))
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_empty(images.shape[0], self.num_classes)


def load_file_teacher(recipe: Recipe, num_classes: int, shape: tuple[int, int, int]) -> FileTeacher:
    teacher = load_teacher_file(recipe.teacher.file, "teacher.file")
    check_teacher_fits(teacher, num_classes, shape, "teacher.file")
    return teacher


def create_teacher(recipe: Recipe, num_classes: int, channels: int) -> nn.Module:
    with blame("teacher.model"):
        return create_model(
            recipe.teacher.model, num_classes=num_classes, in_channels=channels, **recipe.teacher.model_args
        )


def with_teacher_channels(recipe: Recipe) -> Recipe:
    """`data.channels` unset and a teacher checkpoint given: the images get the channels the teacher was
    trained on (its first convolution's input), so a grayscale teacher reads a folder of PNGs as grayscale
    and an RGB one reads digits as RGB. A set `data.channels` is kept (a conflict is the fit check's error)."""
    if recipe.data.channels is not None or recipe.teacher.checkpoint is None or recipe.teacher.file:
        return recipe
    with torch.device("meta"):
        skeleton = create_teacher(recipe, num_classes=1, channels=3)
    channels = checkpoint_input_channels(skeleton, recipe.teacher.checkpoint, "teacher.checkpoint")
    if channels not in (1, 3):
        return recipe
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"channels": channels})})


def prepare(recipe: Recipe, say=None, parallel: Parallel | None = None) -> Prepared:
    """Build everything that can fail on bad input, before anything is written (``say`` hears what a
    latency budget is timing). Under DDP every process prepares the same; a latency budget is timed by
    rank 0 alone and its choice handed to the others."""
    if parallel is None:
        device = pick_device(recipe.device, recipe.mode)
    else:
        device = parallel.device
        set_compute_mode(recipe.mode)
        check_parallel_batches(recipe, parallel.world)
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    check_benchmark_devices(recipe)  # the devices the artifacts will be checked and timed on exist here
    recipe = with_teacher_channels(recipe)
    plan = DataPlan(recipe.data, recipe.teacher.classes, recipe.normalization)
    check_methods(recipe, plan.relation)
    check_int8_mode(recipe, plan.relation)
    check_file_teacher_methods(recipe)
    if parallel is not None:  # also checked by `edgekd build --nproc` before it starts the processes
        check_data_parallel(recipe)
    shape, all_classes = plan.image_shape, len(plan.teacher_ids)
    student_views: dict[int, DataBundle] = {}
    if recipe.latency_budget is not None and recipe.student.family is not None:
        # Sizing to a latency times real exported members: it needs the student's images first.
        student_views = {seed: plan.student(seed) for seed in recipe.student_seeds}
        student_data = student_views[recipe.student_seeds[0]]
        if parallel is None:
            student_choice = choose_student_for_latency(recipe, student_data, device, say)
        else:
            student_choice = parallel.main_does(
                lambda: choose_student_for_latency(recipe, student_data, device, say)
            )
    else:
        student_choice = choose_student(recipe, len(plan.student_ids), shape)
    check_loaded_artifacts(recipe, student_choice, plan)
    # A file teacher is loaded (and checked safe) now: a bad file fails before any memory sum.
    file_teacher = load_file_teacher(recipe, all_classes, shape) if recipe.teacher.file else None

    def build_teacher() -> nn.Module:
        if file_teacher is not None:
            return WeightsOnly(file_teacher.weight_count, all_classes)
        return create_teacher(recipe, all_classes, shape[0])

    # the teacher is first built (on the meta device) here: a bad name or option fails before any memory sum
    check_memory(
        recipe,
        device,
        shape,
        build_teacher,
        lambda: student_choice.create(len(plan.student_ids), shape[0]),
        student_choice.arch,
    )
    teacher_data = plan.teacher(recipe.teacher.train)
    if parallel is not None and recipe.teacher.train is not None:
        check_teacher_batch(teacher_data.batch_size, parallel.world)
    # Every seed's draw is made now, so a draw that cannot be made fails before anything is written.
    student_views = student_views or {seed: plan.student(seed) for seed in recipe.student_seeds}
    student_data = student_views[recipe.student_seeds[0]]
    seed_everything(recipe.seed)
    teacher = file_teacher or create_teacher(recipe, all_classes, shape[0])
    if recipe.teacher.checkpoint is not None:
        load_weights(teacher, recipe.teacher.checkpoint, "teacher.checkpoint", recipe.teacher.model)
        check_loaded_artifacts(recipe, student_choice, plan, teacher)  # what fits only this teacher
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
