"""The summary table of a run, as rows of strings shared by report.md and the CLI."""

from __future__ import annotations

from typing import Any

SUMMARY_COLUMNS = [
    "model",
    "architecture",
    "params",
    "FLOPs",
    "budget",
    "val acc %",
    "test acc %",
    "vs scratch",
    "best epoch",
]


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def budget_cell(record: dict[str, Any]) -> str:
    if record["fits_budget"] is None:
        return "-"
    if record["role"] == "teacher":
        return "teacher"
    return "fits" if record["fits_budget"] else "OVER"


def model_label(record: dict[str, Any]) -> str:
    label = record["name"]
    return f"{label} (main)" if record.get("is_main") else label


def summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    records = metrics["models"]
    scratch = next((r for r in records if r["name"] == "scratch"), None)
    rows = []
    for r in records:
        test = f"{r['test_acc']:.2f}"
        if r["role"] == "teacher" and r.get("student_task_test_acc") is not None and _is_subset(metrics):
            test += f" ({r['student_task_test_acc']:.2f} on the student's classes)"
        delta = "-"
        if scratch is not None and r["role"] == "student" and r is not scratch:
            delta = f"{r['test_acc'] - scratch['test_acc']:+.2f}"
        rows.append(
            [
                model_label(r),
                describe_arch(r["arch"], r.get("model_args") or {}),
                human_count(r["params"]),
                human_count(r["flops"]),
                budget_cell(r),
                f"{r['val_acc']:.2f}",
                test,
                delta,
                str(r.get("best_epoch") or "-"),
            ]
        )
    return rows


def describe_arch(arch: str, model_args: dict[str, Any]) -> str:
    """``resnet8 (width=8)``: the name alone hides the options budget fitting chose."""
    if not model_args:
        return arch
    return f"{arch} (" + ", ".join(f"{key}={value}" for key, value in model_args.items()) + ")"


def _is_subset(metrics: dict[str, Any]) -> bool:
    student = metrics["data"]["student"]
    return bool(student.get("class_subset") or student.get("few_shot_per_class"))


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
