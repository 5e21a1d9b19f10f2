"""Checks of what a recipe will need, made before anything is built, trained or written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models.memory import Footprint, available_bytes, footprint, gib
from edgekd.recipe import Recipe


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
    if recipe.teacher.checkpoint is None:
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
