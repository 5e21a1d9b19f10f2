"""The teacher's own training section (`teacher.train.batch_size`, `augment`, `num_workers`): honoured by a
real teacher training, and a default batch that is the students' only when the students are not few-shot."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

from edgekd.config.loading import load_recipe, validate_recipe
from edgekd.config.train import TEACHER_FEW_SHOT_BATCH
from edgekd.data import DataPlan
from edgekd.data.batches import steps_per_epoch
from edgekd.errors import RecipeError
from edgekd.layout import RunLayout
from edgekd.pipeline import train_teacher
from edgekd.prepare import prepare

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def raw_recipe(tmp_path: Path, data: dict, teacher: dict) -> dict:
    return {
        "name": "teacher_batch",
        "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "digits", **data},
        "teacher": {"model": "resnet8", "model_args": {"width": 8}, **teacher},
        "student": {"model": "resnet8", "model_args": {"width": 8}},
        "distill": {"method": "scratch"},
        "train": {"epochs": 1},
    }


def recipe_of(tmp_path: Path, data: dict, teacher_train: dict, **teacher):
    return validate_recipe(raw_recipe(tmp_path, data, {"train": teacher_train, **teacher}))


def test_teacher_train_batch_size_sets_the_teachers_optimizer_steps(tmp_path):
    """One teacher epoch at its own batch of 100 takes ceil(N / 100) optimizer steps (the students' 16
    would take five times as many); the history has that one epoch."""
    recipe = recipe_of(
        tmp_path,
        {"batch_size": 16, "per_class": 5},
        {"epochs": 1, "batch_size": 100, "augment": "none", "num_workers": 0},
    )
    p = prepare(recipe)
    train_images = len(p.teacher_data.train)
    assert p.teacher_data.batch_size == 100 and p.student_data.batch_size == 16
    assert p.teacher_data.train.augment is None  # teacher.train.augment: none, data.augment: none too
    steps = []
    hook = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        fit = train_teacher(p, RunLayout(tmp_path / "run"), resume=False, progress=None)
    finally:
        hook.remove()
    assert len(steps) == steps_per_epoch(train_images, 100, recipe.data.last_batch) == -(-train_images // 100)
    assert [row["epoch"] for row in fit.history] == [1]


def test_teacher_batch_default_rule(tmp_path):
    # Students on their whole split: the teacher trains at data.batch_size (the quickstart's 64).
    quickstart = load_recipe(RECIPES / "quickstart.yaml")
    plan = DataPlan(quickstart.data, quickstart.teacher.classes)
    assert plan.teacher(quickstart.teacher.train).batch_size == 64
    # Few-shot students (per_class): a normal batch, not the students' 16 ...
    few_shot = recipe_of(tmp_path, {"batch_size": 16, "per_class": 5}, {"epochs": 1})
    plan = DataPlan(few_shot.data)
    teacher = plan.teacher(few_shot.teacher.train)
    assert teacher.batch_size == TEACHER_FEW_SHOT_BATCH == 128
    assert plan.student(0).batch_size == 16
    # ... capped by the teacher's training images (a teacher of two digits that keeps a tenth of them)
    customer = {"student_pool": "customer", "customer_fraction": 0.9, "classes": [0, 1]}
    small = recipe_of(tmp_path, {"batch_size": 16, "per_class": 5, **customer}, {"epochs": 1}, classes=[0, 1])
    plan = DataPlan(small.data, small.teacher.classes)
    teacher = plan.teacher(small.teacher.train)
    assert len(teacher.train) < 128 and teacher.batch_size == len(teacher.train)
    # augment and workers default to the data section's; a loaded teacher is fed as the data section says
    assert DataPlan(quickstart.data).teacher(quickstart.teacher.train).train.augment is not None
    assert plan.teacher(None).batch_size == 16


def test_shipped_few_shot_recipes_keep_their_published_teacher_batch():
    for name in ("digits_crosstask", "digits_specialize", "digits_srm_fewshot"):
        assert load_recipe(RECIPES / f"{name}.yaml").teacher.train.batch_size == 16


def test_trained_on_belongs_to_a_loaded_teacher(tmp_path):
    raw = raw_recipe(tmp_path, {}, {"train": {"epochs": 1}, "trained_on": "digits 0-9"})
    with pytest.raises(RecipeError) as refused:
        validate_recipe(raw)
    assert refused.value.field == "teacher.trained_on"
