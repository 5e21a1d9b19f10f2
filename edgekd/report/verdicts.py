"""The two answers a reader of a run wants first: does the deployed student fit its budget, and does every
artifact compute what the PyTorch student computes. report.html shows them at the top."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgekd.records import ArtifactRecord, BudgetCheck, Int8Record, LatencyCheck, RunMetrics
from edgekd.report.int8 import gate_text
from edgekd.report.tables import human_count, ms_cell


@dataclass(frozen=True)
class Verdict:
    topic: str  # "budget", "parity"
    state: Literal["pass", "fail", "neutral"]  # neutral: nothing to judge (no budget, nothing exported)
    headline: str
    details: tuple[str, ...] = ()


def verdicts(metrics: RunMetrics) -> list[Verdict]:
    return [
        budget_verdict(metrics.budget_check),
        parity_verdict(metrics.artifacts),
        *(int8_verdict(metrics, record) for record in metrics.int8),
    ]


def int8_verdict(metrics: RunMetrics, record: Int8Record) -> Verdict:
    passed, gate = gate_text(metrics, record)
    headline = f"INT8 of {record.model}: {record.shipped_path} shipped (mode {record.mode})"
    return Verdict("int8", "pass" if passed else "fail", headline, (record.why, gate))


def budget_verdict(check: BudgetCheck | None) -> Verdict:
    if check is None:
        return Verdict("budget", "neutral", "no budget set: nothing to check")
    details = [params_line(check)]
    if check.latency is not None:
        details.append(latency_line(check.latency))
    state = {True: "pass", False: "fail", None: "neutral"}[check.fits]
    headline = {
        "pass": "the deployed student fits its budget",
        "fail": "the deployed student breaks its budget",
        "neutral": "the budget could not be checked",
    }[state]
    return Verdict("budget", state, headline, tuple(details))


def params_line(check: BudgetCheck) -> str:
    if check.budget is None:
        return f"params {human_count(check.params)} (no parameter limit)"
    fits = check.params_fit
    if fits is None and check.latency is None:
        fits = check.fits  # a metrics.json from before latency budgets: `fits` was the parameter verdict
    verdict = {True: "fits", False: "OVER", None: "not checked"}[fits]
    return f"params {human_count(check.params)} / {human_count(check.budget)}: {verdict}"


def latency_line(latency: LatencyCheck) -> str:
    where = f"latency {latency.artifact} {latency.statistic} @b{latency.batch}"
    measured = "not measured" if latency.measured_ms is None else f"{ms_cell(latency.measured_ms)} ms"
    line = f"{where}: {measured} / {ms_cell(latency.limit_ms)} ms: {latency.verdict}"
    if latency.predicted_ms is not None:
        line += f" (sizing predicted {ms_cell(latency.predicted_ms)} ms)"
    return line


def parity_verdict(artifacts: list[ArtifactRecord]) -> Verdict:
    # The PyTorch student is the reference the others are compared with, not a checked artifact.
    exported = [a for a in artifacts if a.format != "pytorch"]
    failed = [a for a in exported if a.status == "parity failed"]
    checked = [a for a in exported if a.built]
    not_built = [
        f"not built: {a.name} ({a.status.removeprefix('not built: ')})" for a in exported if not a.built
    ]
    if failed:
        lines = [f"{a.name}: {(a.parity or {}).get('failure') or 'outside its tolerance'}" for a in failed]
        headline = f"{len(failed)} of {len(checked)} artifacts outside tolerance: " + ", ".join(
            a.name for a in failed
        )
        return Verdict("parity", "fail", headline, (*lines, *not_built))
    if checked:
        headline = f"all {len(checked)} artifacts within tolerance"
        return Verdict("parity", "pass", headline, tuple(not_built))
    headline = "no artifact built: nothing to compare" if not_built else "no artifacts exported"
    return Verdict("parity", "neutral", headline, tuple(not_built))
