"""`edgekd sweep`: one build per budget, sharing the teacher, and the accuracy–latency frontier over all of
them: every artifact of every run is a point (its test accuracy, its measured latency); the points no other
point beats on both are the Pareto frontier.

The runs go to <output_dir>/<name>_sweep/<name>-<kind>-<value>/ (each a normal run folder, named by the budget's
value in one spelling: `latency-0.2ms`, `params-70k`), and the comparison to sweep.json, sweep.csv, sweep.md
and frontier.png beside them. The first run trains the teacher when the recipe asks for it; the others load
its checkpoint. A finished run is reused only when it was built from exactly the recipe it would run now;
one of another recipe is refused before anything is built (--force builds every run again).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.config.loading import load_recipe
from edgekd.config.units import parse_count, parse_milliseconds
from edgekd.errors import EdgekdError
from edgekd.fileio import write_json, write_text
from edgekd.layout import RunLayout
from edgekd.recipe import Recipe
from edgekd.records import RunMetrics
from edgekd.runfolder import recipe_changes

KINDS = ("latency", "params")
COLUMNS = [
    "budget",
    "student",
    "params",
    "artifact",
    "val_acc",
    "test_acc",
    "latency_ms",
    "statistic",
    "batch",
    "fits",
    "pareto",
]


@dataclass(frozen=True)
class BudgetPoint:
    kind: str  # latency or params
    text: str  # as the user wrote it: "0.5ms", "50k"
    value: float  # canonical: milliseconds to 12 significant digits, or a whole count

    @property
    def override(self) -> str:
        if self.kind == "latency":
            return f"student.budget.latency.limit_ms={_shortest(self.value)}"
        return f"student.budget.params={int(self.value)}"

    @property
    def canonical(self) -> str:
        """The budget in one spelling ('0.2ms', '70k'): two points share it only when they are one budget."""
        if self.kind == "latency":
            return f"{_shortest(self.value)}ms"
        count = int(self.value)
        for suffix, unit in (("M", 1_000_000), ("k", 1_000)):
            if count % unit == 0:
                return f"{count // unit}{suffix}"
        return str(count)

    @property
    def label(self) -> str:
        """The run folder's suffix, from the value rather than the spelling: '2e-1ms' and '2e1ms' are
        'latency-0.2ms' and 'latency-20ms', never one folder."""
        return f"{self.kind}-{self.canonical}"


def _shortest(number: float) -> str:
    """The shortest text that reads back as `number` ('0.2', '20', '2e-05'): one text per value."""
    text = repr(float(number))
    return text.removesuffix(".0")


def parse_budgets(texts: str | Sequence[str]) -> list[BudgetPoint]:
    """`latency=0.5ms,1ms,2ms` or `params=50k,100k` → one point per value, in the order given; several
    options are their union (`--budget latency=1ms --budget params=50k`). One budget named twice, in any
    spelling (`0.5ms` and `500us`), is refused."""
    points = [point for text in ([texts] if isinstance(texts, str) else texts) for point in _parse_one(text)]
    seen: dict[str, BudgetPoint] = {}
    for point in points:
        twin = seen.setdefault(point.label, point)
        if twin is not point:
            raise EdgekdError(
                f"--budget: {point.kind} {twin.text!r} and {point.text!r} are the same budget "
                f"({point.canonical}); allowed: each budget once"
            )
    return points


def _parse_one(text: str) -> list[BudgetPoint]:
    kind, sep, values = text.partition("=")
    kind = kind.strip()
    if not sep or kind not in KINDS or not values.strip():
        raise EdgekdError(f"--budget: got {text!r}; allowed: latency=0.5ms,1ms or params=50k,100k")
    points = []
    for item in (part.strip() for part in values.split(",")):
        parsed = parse_milliseconds(item) if kind == "latency" else parse_count(item)
        if not isinstance(parsed, int | float) or isinstance(parsed, bool) or not 0 < parsed < math.inf:
            unit = "a time such as 0.5ms or 500us" if kind == "latency" else "a count such as 50k"
            raise EdgekdError(f"--budget: {kind} value {item!r} is not {unit}")
        # 300us is 300 x 0.001 ms = 0.30000000000000004: rounded, it is the 0.3ms it means
        value = float(f"{parsed:.12g}") if kind == "latency" else float(parsed)
        points.append(BudgetPoint(kind, item, value))
    return points


def sweep_recipes(
    path: Path, overrides: tuple[str, ...], points: list[BudgetPoint]
) -> tuple[Recipe, list[Recipe]]:
    """The recipe as given, and once per budget point, each checked before anything runs (a bad value
    fails first)."""
    base = load_recipe(path, overrides)
    if base.student.family is None:
        raise EdgekdError(
            "student.family: a sweep sizes the student to each budget; allowed: a family recipe"
        )
    from edgekd.preflight import check_benchmark_devices

    recipes = [point_recipe(path, overrides, base, point, teacher=None) for point in points]
    for recipe in recipes:  # a latency point may add an onnxruntime target to a recipe that had none
        check_benchmark_devices(recipe)
    return base, recipes


def point_recipe(
    path: Path, overrides: tuple[str, ...], base: Recipe, point: BudgetPoint, teacher: Path | None
) -> Recipe:
    """The recipe at one budget, in the sweep's folder; with ``teacher``, loading that teacher instead of
    training one."""
    folder = base.output_dir / f"{base.name}_sweep"
    extra = [point.override, f"name={base.name}-{point.label}", f"output_dir={folder}"]
    if point.kind == "latency" and (base.latency_budget is None or base.latency_budget.cache_dir is None):
        extra.append(f"student.budget.latency.cache_dir={base.latency_cache_dir}")  # one cache for all runs
    if teacher is not None and base.teacher.train is not None:
        extra += ["teacher.train=null", f"teacher.checkpoint={teacher}"]
    return load_recipe(path, (*overrides, *extra))


def run_sweep(
    path: Path,
    overrides: tuple[str, ...],
    budgets: str | Sequence[str],
    *,
    force: bool = False,
    progress=None,
) -> dict[str, Any]:
    from edgekd.pipeline import build

    points = parse_budgets(budgets)
    base, recipes = sweep_recipes(path, overrides, points)
    reused = [None] * len(points) if force else reusable_runs(path, overrides, base, points, recipes)
    teacher = shared_teacher(base, recipes[0])
    runs: list[tuple[BudgetPoint, RunMetrics]] = []
    for index, (point, recipe, metrics) in enumerate(zip(points, recipes, reused, strict=True)):
        if metrics is None:
            if index > 0 and teacher is not None:
                recipe = point_recipe(path, overrides, base, point, teacher)
            metrics = build(recipe, force=recipe.run_dir.exists(), progress=progress)
        runs.append((point, metrics))
    return write_sweep(recipes[0].output_dir, runs, path)


def shared_teacher(base: Recipe, first: Recipe) -> Path | None:
    """The teacher the first run trains and the others load (None when the recipe loads its own)."""
    return RunLayout(first.run_dir).model_weights("teacher") if base.teacher.train is not None else None


def reusable_runs(
    path: Path, overrides: tuple[str, ...], base: Recipe, points: list[BudgetPoint], recipes: list[Recipe]
) -> list[RunMetrics | None]:
    """Per point, its finished run when that was built from exactly the recipe it would run now (None: build
    it). A finished run of another recipe (`--set train.epochs=5` since), or one distilled from a teacher
    this sweep trains again, is refused before anything is built: it would be silently stale."""
    teacher = shared_teacher(base, recipes[0])
    reused: list[RunMetrics | None] = []
    for index, (point, recipe) in enumerate(zip(points, recipes, strict=True)):
        if not RunLayout(recipe.run_dir).metrics.is_file():  # not built, or not finished: build it
            reused.append(None)
            continue
        if index > 0 and teacher is not None:
            if reused[0] is None:
                raise EdgekdError(
                    f"--budget {point.kind} {point.text}: the finished run '{recipe.run_dir}' was distilled from "
                    f"the teacher of '{recipes[0].run_dir}', which this sweep trains again; allowed: --force "
                    "to build every run again"
                )
            recipe = point_recipe(path, overrides, base, point, teacher)
        check_same_recipe(point, recipe)
        reused.append(RunMetrics.load(RunLayout(recipe.run_dir).metrics))
    return reused


def check_same_recipe(point: BudgetPoint, recipe: Recipe) -> None:
    changes = recipe_changes(RunLayout(recipe.run_dir), recipe)
    if changes:
        shown = ", ".join(changes[:5]) + (", ..." if len(changes) > 5 else "")
        raise EdgekdError(
            f"--budget {point.kind} {point.text}: the finished run '{recipe.run_dir}' was built from another "
            f"recipe (it differs in {shown}); allowed: the same recipe and --set values, or --force to build "
            "every run again"
        )


def sweep_points(runs: list[tuple[BudgetPoint, RunMetrics]]) -> list[dict[str, Any]]:
    """One point per timed artifact of every run, at the budget's batch (else the first timed batch)."""
    rows = []
    for point, metrics in runs:
        check = metrics.budget_check
        latency_budget = (metrics.budget or {}).get("latency") or {}
        statistic = latency_budget.get("statistic", "p50")
        batch = latency_budget.get("batch")
        choice = metrics.student_choice
        for record in metrics.artifacts:
            timings = (record.latency or {}).get("batches") or []
            timing = next((t for t in timings if t["batch"] == batch), timings[0] if timings else None)
            if timing is None or record.test_acc is None:
                continue
            shipped = (
                check is not None and check.latency is not None and check.latency.artifact == record.name
            )
            rows.append(
                {
                    "budget": f"{point.kind} {point.text}",
                    "student": f"{choice.arch} {choice.model_args or ''}".strip(),
                    "params": choice.params,
                    "artifact": record.name,
                    "val_acc": record.val_acc,
                    "test_acc": record.test_acc,
                    "latency_ms": round(timing[f"{statistic}_ms"], 4),
                    "statistic": statistic,
                    "batch": timing["batch"],
                    "fits": (check.latency.fits if shipped else None)
                    if point.kind == "latency"
                    else check.fits,
                    "run": str(metrics.run.name),
                }
            )
    mark_pareto(rows, "val_acc")  # a budget is chosen from this frontier: on validation, never on test
    return rows


def mark_pareto(rows: list[dict[str, Any]], accuracy: str = "test_acc") -> None:
    """A point is on the frontier when no other point is at least as accurate (by ``accuracy``) and at least
    as fast, and strictly better in one of the two."""
    for row in rows:
        row["pareto"] = not any(
            other[accuracy] >= row[accuracy]
            and other["latency_ms"] <= row["latency_ms"]
            and (other[accuracy] > row[accuracy] or other["latency_ms"] < row["latency_ms"])
            for other in rows
        )


def write_sweep(
    folder: Path, runs: list[tuple[BudgetPoint, RunMetrics]], recipe_path: Path
) -> dict[str, Any]:
    from edgekd.report.plots import frontier_plot
    from edgekd.report.tables import markdown_table

    rows = sweep_points(runs)
    plot = frontier_plot(rows, folder / "frontier.png")
    result = {
        "recipe": str(recipe_path),
        "budgets": [f"{point.kind} {point.text}" for point, _ in runs],
        "runs": [str(folder / metrics.run.name) for _, metrics in runs],
        "points": rows,
        "frontier": [row for row in rows if row["pareto"]],
        "plot": str(plot) if plot else None,
    }
    write_json(folder / "sweep.json", result)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[*COLUMNS, "run"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(folder / "sweep.csv", text.getvalue())
    table = [[_cell(row[column]) for column in COLUMNS] for row in rows]
    lines = [
        f"# Sweep of `{recipe_path}`",
        "",
        "Every artifact of every run: accuracy against measured latency; `pareto`: on validation accuracy "
        "(what a budget is chosen on; test accuracy is reported only), no other point is "
        "both at least as accurate and at least as fast.",
        "",
        markdown_table(COLUMNS, table),
        "",
        "![frontier](frontier.png)" if plot else "",
        "",
    ]
    write_text(folder / "sweep.md", "\n".join(lines))
    result["folder"] = str(folder)
    return result


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
