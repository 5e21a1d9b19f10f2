"""Which students a build deploys (`export.models`), and what a user should know before shipping one.

Everything here is decided on validation accuracy: the test split only reports what was chosen.
"""

from __future__ import annotations

from edgekd.recipe import Recipe
from edgekd.records import ModelRecord, ShippedStudent


def ship(recipe: Recipe, models: list[ModelRecord]) -> ShippedStudent:
    """The student to ship and every student to export, per `export.models`."""
    students = [record for record in models if record.role == "student"]
    by_name = {record.name: record for record in students}
    main = next(record for record in students if record.is_main)
    rule = recipe.export.models
    seed = recipe.student_seeds[0]
    if isinstance(rule, list):
        shipped = by_name[rule[0]]
        reason = f"named first in export.models (validation {_accuracy(shipped)})"
        exported = list(rule)
    elif rule == "main":
        shipped, reason, exported = main, "the main method's (export.models: main)", [main.name]
    else:
        shipped, reason = _best_on_validation(students, main)
        exported = [shipped.name]
        if rule == "all":
            exported += [record.name for record in students if record.name != shipped.name]
    return ShippedStudent(model=shipped.name, seed=seed, rule=str(rule), reason=reason, exported=exported)


def _best_on_validation(students: list[ModelRecord], main: ModelRecord) -> tuple[ModelRecord, str]:
    """The highest validation accuracy among the students within the budget; ties go to the main method,
    then to the recipe's order. A student over its budget (a fine-tuned teacher) is never chosen."""
    eligible = [record for record in students if record.fits_budget is not False] or [main]
    ranked = sorted(eligible, key=lambda record: (-record.val_acc, not record.is_main))
    best = ranked[0]
    listed = "; ".join(
        f"{record.name}{' (main)' if record.is_main else ''} {_accuracy(record)}" for record in ranked
    )
    if best.is_main:
        reason = f"the best validation accuracy: {listed}"
    else:
        reason = f"the best validation accuracy, above the main method's: {listed}"
    over = [record.name for record in students if record.fits_budget is False]
    if over:
        reason += f"; over the budget, not considered: {', '.join(over)}"
    return best, reason


def _accuracy(record: ModelRecord) -> str:
    spread = f" ± {record.val_acc_std:.2f}" if record.val_acc_std is not None else ""
    return f"{record.val_acc:.2f}{spread} %"


def shipping_warnings(recipe: Recipe, models: list[ModelRecord]) -> list[str]:
    """The main method below its reference, and a teacher below a student, both on validation."""
    warnings = []
    students = {record.name: record for record in models if record.role == "student"}
    main = next(record for record in students.values() if record.is_main)
    reference = students.get(recipe.report.reference or "scratch")
    if reference is not None and reference is not main and main.val_acc < reference.val_acc:
        warnings.append(
            f"the main method {main.name} is below its reference {reference.name} on validation "
            f"({_accuracy(main)} vs {_accuracy(reference)}): at this budget and data it does not pay off"
        )
    teacher = next((record for record in models if record.role == "teacher"), None)
    teacher_val = teacher.student_task_val_acc if teacher is not None else None
    if teacher_val is not None:
        stronger = [record for record in students.values() if record.val_acc > teacher_val]
        if stronger:
            best = max(stronger, key=lambda record: record.val_acc)
            warnings.append(
                f"the teacher is weaker than the student {best.name} on validation ({teacher_val:.2f} % vs "
                f"{_accuracy(best)}): distilling from it can only pull the student down; check the teacher "
                "(its checkpoint, preprocessing: data.normalize, channels, stem) or train it longer"
            )
    return warnings
