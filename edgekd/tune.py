"""`edgekd tune`: compare recipe variants on validation accuracy, never on the test split.

A grid over `distill.*` and `train.*` fields (the student's method and training: the teacher and the data
stay those of the recipe, so one teacher serves every variant) is trained for every seed; each variant is
scored by the validation accuracy of its selected model, mean ± std over seeds, with the paired difference
to the first variant. The test split is never evaluated here, so a value chosen with this command says so
honestly: "chosen on validation". Results go to <output_dir>/<name>-tune-<method>/tune.json, and finished students
are reused when the same command runs again (resumable).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import time
from typing import Any

import numpy as np

from edgekd.config.loading import apply_override, validate_recipe
from edgekd.errors import EdgekdError, TrainingDiverged
from edgekd.fileio import write_json
from edgekd.layout import RunLayout
from edgekd.recipe import Recipe
from edgekd.report.stats import paired_difference
from edgekd.runlock import run_folder_lock

TUNABLE_SECTIONS = ("distill", "train")


@dataclasses.dataclass(frozen=True)
class GridAxis:
    field: str
    values: list[str]  # as typed: each is read as YAML when applied, like --set


def parse_grid(text: str) -> GridAxis:
    """`distill.skd.fm_scale=0.01,0.1,1` -> the field and its values (each read as YAML)."""
    field, sep, values = text.partition("=")
    field = field.strip()
    if not sep or not field or not values.strip():
        raise EdgekdError(f"--grid: '{text}' is not of the form section.field=value1,value2,...")
    if field.split(".")[0] not in TUNABLE_SECTIONS:
        raise EdgekdError(
            f"--grid: '{field}' is not tunable here (allowed: fields under {', '.join(TUNABLE_SECTIONS)}: the "
            "teacher and the data must stay the recipe's, so that one teacher serves every variant)"
        )
    return GridAxis(field, _split_values(values))


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so list values like [1,2] stay whole."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part.strip() for part in [*parts, current] if part.strip()]


def variants(base: dict[str, Any], axes: list[GridAxis]) -> list[tuple[str, list[str], Recipe]]:
    """(label, overrides, recipe) for every point of the grid, in the order the values were given."""
    out = []
    for point in itertools.product(*(axis.values for axis in axes)):
        overrides = [f"{axis.field}={value}" for axis, value in zip(axes, point, strict=True)]
        raw = copy.deepcopy(base)
        for override in overrides:
            apply_override(raw, override)
        label = ", ".join(overrides)
        out.append((label, overrides, validate_recipe(raw)))
    return out


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)[:120]


def tune(
    recipe: Recipe, axes: list[GridAxis], method: str | None, *, force: bool = False, progress=None
) -> dict[str, Any]:
    """Train `method` (default: the recipe's main method) for every grid point and seed; score on val."""
    from edgekd.evaluation import environment
    from edgekd.pipeline import train_teacher
    from edgekd.prepare import prepare
    from edgekd.runfolder import open_run_dir

    method = method or recipe.distill.method
    names = [recipe.distill.method, *recipe.distill.baselines, *recipe.distill.variants]
    if method not in names:
        raise EdgekdError(f"--method: '{method}' is not in this recipe (allowed: {', '.join(names)})")
    started = time.perf_counter()
    grid = variants(recipe.model_dump(mode="json"), axes)
    # One folder per tuned method: a second method's tune (or its --force) leaves the first one's results.
    tune_recipe = recipe.model_copy(update={"name": f"{recipe.name}-tune-{method}"})
    prepared = prepare(tune_recipe)
    with run_folder_lock(tune_recipe.run_dir):
        layout = open_run_dir(tune_recipe, resume=not force, force=force)
        train_teacher(prepared, layout, resume=True, progress=progress)
        prepared.teacher.to(prepared.device).eval()
        rows = [
            score_variant(prepared, variant, label, overrides, method, layout, progress)
            for label, overrides, variant in grid
        ]
        add_paired_to_first(rows, recipe)
        result = {
            "recipe": recipe.name,
            "method": method,
            "seeds": recipe.student_seeds,
            "grid": [{"field": axis.field, "values": axis.values} for axis in axes],
            "scored_on": "validation split of the student (test never evaluated)",
            "variants": rows,
            "best": best_variant(rows)["label"],
            "wall_time_s": round(time.perf_counter() - started, 1),
            "environment": environment(None),
        }
        write_json(layout.tune_result, result)
    result["path"] = str(layout.tune_result)
    return result


def score_variant(
    prepared, variant: Recipe, label: str, overrides: list[str], method: str, layout: RunLayout, progress
) -> dict[str, Any]:
    """Train `method` under one grid point for every seed (reusing finished students); its validation row."""
    from edgekd.pipeline import train_student
    from edgekd.train import evaluate

    p = dataclasses.replace(prepared, recipe=variant.model_copy(update={"name": prepared.recipe.name}))
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in variant.student_seeds:
        folder = layout.tune_variant(slug(label), method, seed)
        try:
            student, _, plan = train_student(
                p, layout, method, seed, resume=True, progress=progress, folder=folder
            )
        except TrainingDiverged as exc:
            per_seed[seed] = {"diverged": str(exc)}
            break  # a variant that does not train is out; its other seeds need not run
        val_acc, val_loss = evaluate(student, p.student_data_for(seed).eval_loader("val"), p.device)
        per_seed[seed] = {
            "val_acc": round(val_acc, 4),
            "val_loss": round(val_loss, 6),
            "best_epoch": plan.final.best_epoch,
        }
    return variant_row(label, overrides, per_seed)


def variant_row(label: str, overrides: list[str], per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    diverged = [run["diverged"] for run in per_seed.values() if "diverged" in run]
    if diverged:
        return {
            "label": label,
            "overrides": overrides,
            "diverged": diverged[0],
            "val_acc": None,
            "val_acc_std": None,
            "val_loss": None,
            "per_seed": {str(seed): run for seed, run in per_seed.items()},
        }
    accs = np.array([run["val_acc"] for run in per_seed.values()])
    losses = np.array([run["val_loss"] for run in per_seed.values()])
    return {
        "label": label,
        "overrides": overrides,
        "val_acc": round(float(accs.mean()), 4),
        "val_acc_std": round(float(accs.std(ddof=1)), 4) if len(accs) > 1 else None,
        "val_loss": round(float(losses.mean()), 6),
        "per_seed": {str(seed): run for seed, run in per_seed.items()},
    }


def add_paired_to_first(rows: list[dict[str, Any]], recipe: Recipe) -> None:
    if rows[0].get("diverged"):
        return
    first = {int(s): run["val_acc"] for s, run in rows[0]["per_seed"].items()}
    for row in rows[1:]:
        if row.get("diverged"):
            continue
        values = {int(s): run["val_acc"] for s, run in row["per_seed"].items()}
        row["paired_vs_first"] = paired_difference(
            values,
            first,
            reference_name=rows[0]["label"],
            metric="val_acc",
            confidence=recipe.report.confidence,
            method=recipe.report.interval,
        )


def best_variant(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest mean validation accuracy; ties go to the lower mean validation loss, then to the first."""
    trained = [row for row in rows if not row.get("diverged")]
    if not trained:
        raise EdgekdError("tune: every variant diverged (a loss became NaN or infinite); try smaller values")
    return max(trained, key=lambda row: (row["val_acc"], -row["val_loss"]))
