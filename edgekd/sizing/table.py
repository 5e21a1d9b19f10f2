"""`edgekd latency-table`: the whole family timed on the recipe's latency target, saved as CSV and JSON."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from edgekd.data import DataPlan
from edgekd.errors import EdgekdError
from edgekd.fileio import folder_problem, write_json, write_text
from edgekd.recipe import Recipe
from edgekd.records import Sizing
from edgekd.sizing.latency_budget import latency_table, progress_line

TABLE_COLUMNS = ("member", "model", "params", "flops", "p50_ms", "p90_ms", "p99_ms", "source", "fits")


def write_latency_table(
    recipe: Recipe, out: Path | None, progress=None, refresh: bool = False
) -> tuple[Sizing, list[Path]]:
    """Time (or read from the cache) every member, then write <out>/<name>.csv and .json."""
    budget = recipe.latency_budget
    if budget is None or recipe.student.family is None:
        raise EdgekdError(
            "student.budget.latency: latency-table needs a student family and a latency target; allowed: a "
            "recipe with both, e.g. --set student.family=resnet --set student.budget.latency.limit_ms=1"
        )
    folder = out or recipe.output_dir / "latency_tables"
    field = "--out" if out is not None else "output_dir"
    check_output_folder(folder, field)  # before minutes of timing, not after
    data = DataPlan(recipe.data, recipe.teacher.classes, recipe.normalization).student(
        recipe.student_seeds[0]
    )
    table = latency_table(recipe, data, progress_line(progress, "latency table"), refresh=refresh)
    target = table.target
    stem = (
        f"{target['family']}_{target['backend']}_{target['precision']}_b{target['batch']}_"
        f"t{target['threads'] or 'default'}_{Path(table.cache_file).stem}"
    )
    try:
        paths = [
            write_text(folder / f"{stem}.csv", table_csv(table)),
            write_json(folder / f"{stem}.json", table.model_dump(mode="json")),
        ]
    except OSError as error:  # the folder changed while the family was timed (the timings stay cached)
        raise EdgekdError(f"{field}: cannot write the table into '{folder}' ({error.strerror})") from None
    return table, paths


def check_output_folder(folder: Path, field: str) -> None:
    problem = folder_problem(folder)
    if problem is not None:
        raise EdgekdError(
            f"{field}: '{folder}' {problem}; allowed: a folder (existing or new) this user can write in"
        )


def table_csv(table: Sizing) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for row in table.candidates:
        timings = row.timings_ms
        writer.writerow(
            [
                row.member,
                row.model,
                row.params,
                row.flops,
                timings.get("p50", ""),
                timings.get("p90", ""),
                timings.get("p99", ""),
                row.source,
                "" if row.fits is None else row.fits,
            ]
        )
    return text.getvalue()
