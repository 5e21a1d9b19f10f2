"""Checks of what a recipe will need, made before anything is built, trained or written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgekd.errors import EdgekdError, RecipeError
from edgekd.formats import FORMATS, format_of_runtime
from edgekd.models.memory import Footprint, available_bytes, footprint, gib
from edgekd.recipe import Recipe

ONNXRUNTIME_DEVICE_FIELD = "benchmark.onnxruntime_device"


@dataclass(frozen=True)
class Phase:
    """One step of the run and the memory it needs at least."""

    what: str
    needs: int
    activations: int
    field: str  # the recipe field to change when the phase does not fit


def memory_phases(recipe: Recipe, teacher: Footprint, student: Footprint, student_name: str) -> list[Phase]:
    data = recipe.data
    batch, eval_batch = data.batch_size, data.eval_batch_size
    # Methods that use unlabelled images see a labelled and an unlabelled batch per step.
    extra = (data.unlabeled_batch_size or batch) if data.unlabeled != "none" else 0
    phases = []
    if recipe.teacher.train is not None:
        phases.append(
            Phase(
                f"training the teacher {recipe.teacher.model} on batches of {batch}",
                teacher.training_bytes(batch),
                teacher.outputs_per_image * batch,
                "teacher.model",
            )
        )
    step = batch + extra
    phases.append(
        Phase(
            f"distilling into the student {student_name} on batches of {step}",
            student.training_bytes(step) + teacher.inference_bytes(step),
            student.outputs_per_image * step + 2 * teacher.largest_output_per_image * step,
            "student.model" if recipe.student.model else "student.budget.params",
        )
    )
    phases.append(
        Phase(
            f"evaluating the teacher on batches of {eval_batch}",
            teacher.inference_bytes(eval_batch),
            2 * teacher.largest_output_per_image * eval_batch,
            "teacher.model",
        )
    )
    return phases


def check_memory(
    recipe: Recipe,
    device: torch.device,
    input_shape: tuple[int, int, int],
    build_teacher: Callable[[], nn.Module],
    build_student: Callable[[], nn.Module],
    student_name: str,
) -> None:
    """Refuse a run whose teacher or student cannot fit in memory at the recipe's batch and image size."""
    teacher, student = footprint(build_teacher, input_shape), footprint(build_student, input_shape)
    available, where = available_bytes(device)
    for phase in memory_phases(recipe, teacher, student, student_name):
        if phase.needs <= available:
            continue
        if phase.activations * 2 >= phase.needs:  # mostly activations: the batch or image size is the cause
            field = "data.eval_batch_size" if phase.what.startswith("evaluating") else "data.batch_size"
            fix = f"a smaller {field} or data.image_size (images are {'x'.join(map(str, input_shape))})"
        else:
            field, fix = phase.field, "a smaller model"
        raise EdgekdError(
            f"{field}: {phase.what} needs at least {gib(phase.needs)} (activations {gib(phase.activations)}), "
            f"more than {where} ({gib(available)}); allowed: {fix}"
        )


def onnxruntime_cuda_missing() -> str | None:
    """Why ONNX Runtime's CUDA execution provider cannot run here, or None where it can."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return (
            f"this onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (it has "
            f"{', '.join(available)}): install onnxruntime-gpu in place of onnxruntime (see the README)"
        )
    if not torch.cuda.is_available():
        return "there is no CUDA GPU on this machine (torch.cuda.is_available() is False)"
    return None


def check_onnxruntime_device(device: str, field: str = ONNXRUNTIME_DEVICE_FIELD) -> None:
    """Refuse ONNX artifacts on 'cuda' where that cannot run, before anything is built or exported."""
    if device == "cpu":
        return
    why = onnxruntime_cuda_missing()
    if why is not None:
        raise RecipeError(field, f"got {device!r}, but {why}; allowed here: cpu")


def check_benchmark_devices(recipe: Recipe) -> None:
    """The devices the recipe's artifacts are checked and timed on exist here, where anything runs on them:
    an export target or a latency budget whose runner takes the device setting (the catalog's
    `runner_settings`: ONNX Runtime's `benchmark.onnxruntime_device`)."""
    budget = recipe.latency_budget
    used = set(recipe.export.targets)
    if budget is not None and format_of_runtime(budget.backend) is not None:
        used.add(format_of_runtime(budget.backend))
    if any("device" in FORMATS[name].runner_settings for name in used):
        check_onnxruntime_device(recipe.benchmark.onnxruntime_device)
