"""The budget checked on what ships: the deployed artifact of a latency budget's format and precision, timed
at the budget's batch and threads (the benchmark's own timing is reused when it matches), folded together
with the parameter limit into metrics.json's budget check; --strict-budget turns "over" into a failed build."""

from __future__ import annotations

from typing import Any

from torch import nn

from edgekd.bench import LatencyConfig, TorchRunner, measure_latency
from edgekd.errors import CheckFailed
from edgekd.recipe import Recipe
from edgekd.records import ArtifactRecord, BudgetCheck, LatencyCheck, Sizing
from edgekd.runtime import file_runner


def latency_check(
    recipe: Recipe,
    artifacts: list[ArtifactRecord],
    student: nn.Module,
    image_shape: tuple[int, int, int],
    sizing: Sizing | None,
) -> LatencyCheck:
    budget = recipe.latency_budget
    assert budget is not None
    threads = recipe.latency_threads
    record = next((r for r in artifacts if r.name == budget.artifact_name), None)
    measured, why = None, None
    if record is None or not record.built:
        why = f"not measured: {record.status if record else 'not exported'}"
    else:
        timing = reused_timing(record, budget.batch, threads) or time_artifact(
            recipe, record, student, image_shape
        )
        measured = timing[f"{budget.statistic}_ms"]
    fits = None if measured is None else measured <= budget.limit_ms
    return LatencyCheck(
        artifact=budget.artifact_name,
        statistic=budget.statistic,
        batch=budget.batch,
        threads=threads,
        limit_ms=budget.limit_ms,
        measured_ms=None if measured is None else round(measured, 4),
        predicted_ms=predicted(sizing),
        fits=fits,
        verdict=why or verdict(measured, budget.limit_ms),
    )


def verdict(measured: float, limit: float) -> str:
    if measured <= limit:
        return "fits"
    return f"OVER by {100 * (measured / limit - 1):.1f} %"


def predicted(sizing: Sizing | None) -> float | None:
    """What sizing measured for the chosen member (random weights), to compare with the trained artifact."""
    if sizing is None:
        return None
    chosen = next(row for row in sizing.candidates if row.member == sizing.chosen)
    return chosen.latency_ms


def reused_timing(record: ArtifactRecord, batch: int, threads: int | None) -> dict[str, Any] | None:
    """The benchmark's timing of the artifact when it was taken at the budget's batch and threads."""
    latency = record.latency or {}
    if latency.get("config", {}).get("threads") != threads:
        return None
    return next((timing for timing in latency.get("batches", []) if timing["batch"] == batch), None)


def time_artifact(
    recipe: Recipe, record: ArtifactRecord, student: nn.Module, image_shape: tuple[int, int, int]
) -> dict[str, Any]:
    budget = recipe.latency_budget
    threads = recipe.latency_threads
    if record.format == "pytorch":
        runner = TorchRunner(student, threads=threads)
    else:
        runner = file_runner(
            record.path, record.format, record.precision, threads, recipe.benchmark.onnxruntime_device
        )
    settings = LatencyConfig(**{**recipe.benchmark.to_dict(), "batches": [budget.batch], "threads": threads})
    return measure_latency(runner, image_shape, settings, seed=recipe.seed).at_batch(budget.batch).to_dict()


class BudgetExceeded(CheckFailed):
    """The deployed student breaks its budget and --strict-budget was given (exit code 1)."""


def budget_summary(recipe: Recipe) -> dict[str, Any]:
    """metrics.json's `budget`: the limits the recipe set (null where it set none)."""
    latency = recipe.latency_budget
    if latency is None:
        return {"params": recipe.student.budget.params if recipe.student.budget else None, "latency": None}
    described = latency.model_dump(mode="json", exclude={"cache_dir"})
    return {
        "params": recipe.student.budget.params,
        "latency": {**described, "threads": recipe.latency_threads, "artifact": latency.artifact_name},
    }


def with_latency(check: BudgetCheck | None, params: int, latency: LatencyCheck) -> BudgetCheck:
    """The budget check with the latency limit's verdict folded in: it fits when every limit holds, is over
    when any is, and unknown when a limit could not be measured here."""
    verdicts = [latency.fits] + ([check.params_fit] if check is not None else [])
    fits = False if False in verdicts else None if None in verdicts else True
    if check is None:
        return BudgetCheck(params=params, latency=latency, fits=fits)
    return check.model_copy(update={"latency": latency, "fits": fits})


def over_budget_text(check: BudgetCheck) -> str:
    parts = []
    if check.params_fit is False:
        parts.append(f"{check.params:,} params > {check.budget:,}")
    latency = check.latency
    if latency is not None and latency.fits is False:
        parts.append(
            f"{latency.artifact} {latency.statistic} {latency.measured_ms:.4g} ms > {latency.limit_ms:g} ms "
            f"({latency.verdict})"
        )
    return "; ".join(parts)


def budget_target(recipe: Recipe) -> tuple[str, str] | None:
    """The artifact a latency budget bounds is exported even when export.targets does not name it."""
    budget = recipe.latency_budget
    if budget is None or budget.format is None:
        return None
    return (budget.format, budget.precision)
