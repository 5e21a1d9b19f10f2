"""The summary table of a run, as rows of strings shared by report.md and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekd.records import ArtifactRecord, BudgetCheck, ModelRecord, RunMetrics
from edgekd.report.stats import difference_cell

SUMMARY_COLUMNS = [
    "model",
    "architecture",
    "params",
    "FLOPs",
    "budget",
    "val acc %",
    "test acc %",
    "paired Δ test acc",
    "best epoch",
]


def summary_columns(metrics: RunMetrics) -> list[str]:
    """The summary's columns, the paired-difference one naming its reference and confidence."""
    paired = next((r.paired for r in metrics.models if r.paired), None)
    if paired is None:
        return SUMMARY_COLUMNS
    label = f"Δ vs {paired.reference}"
    if any(r.paired.interval is not None for r in metrics.models if r.paired):
        label += f" [{100 * paired.confidence:.0f}% CI, {paired.interval_method}]"
    if paired.correction == "holm":
        label += f", Holm over {paired.comparisons}"
    return [label if c == "paired Δ test acc" else c for c in SUMMARY_COLUMNS]


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def budget_cell(record: ModelRecord) -> str:
    if record.fits_budget is None:
        return "-"
    if record.role == "teacher":
        return "teacher"
    return "fits" if record.fits_budget else "OVER"


def model_label(record: ModelRecord) -> str:
    return f"{record.name} (main)" if record.is_main else record.name


def summary_rows(metrics: RunMetrics) -> list[list[str]]:
    records = metrics.models
    rows = []
    for r in records:
        test = accuracy_cell(r, "test_acc")
        if r.role == "teacher":
            test += teacher_accuracy_note(metrics, r)
        paired = r.paired.model_dump() if r.paired else None
        delta = "reference" if _is_reference(r, records) else difference_cell(paired)
        rows.append(
            [
                model_label(r),
                describe_arch(r.arch, r.model_args),
                human_count(r.params),
                human_count(r.flops),
                budget_cell(r),
                accuracy_cell(r, "val_acc"),
                test,
                delta,
                str(r.best_epoch or "-"),
            ]
        )
    return rows


def _is_reference(record: ModelRecord, records: list[ModelRecord]) -> bool:
    return any(r.paired is not None and r.paired.reference == record.name for r in records)


def teacher_accuracy_note(metrics: RunMetrics, teacher: ModelRecord) -> str:
    """Which classes the teacher's accuracy was measured on, where they are not the student's: its own
    (and, where it has the student's classes, its accuracy on those too)."""
    own = teacher_classes(metrics)
    if own == student_classes(metrics):
        return ""
    note = f" (on the teacher's classes: {class_list_text(metrics.teacher_data, own)}"
    if teacher.student_task_test_acc is not None:
        note += f"; {teacher.student_task_test_acc:.2f} on the student's classes"
    return note + ")"


def teacher_classes(metrics: RunMetrics) -> list[int]:
    return list(metrics.teacher_data.get("class_ids") or [])


def student_classes(metrics: RunMetrics) -> list[int]:
    return list(metrics.student_data.get("class_ids") or [])


def class_list_text(data: dict[str, Any], ids: list[int], most: int = 12) -> str:
    """``0, 1, 2, 3, 4`` (the data's class names), or ``100 classes`` when there are too many to list."""
    names = list(data.get("class_names") or ids)
    if len(names) > most:
        return f"{len(names)} classes"
    return ", ".join(str(name) for name in names)


# ------------------------------------------------------------------------------- what the teacher saw
# The facts the "What each model used" table and the Protocol text both state, derived once here.
def teacher_record_of(metrics: RunMetrics) -> ModelRecord | None:
    return next((r for r in metrics.models if r.role == "teacher"), None)


# How a teacher trained elsewhere comes to the run: its training images are the recipe's word, or not known.
LOADED_SOURCES = ("checkpoint", "file")


def teacher_is_loaded(metrics: RunMetrics) -> bool:
    teacher = teacher_record_of(metrics)
    return teacher is not None and teacher.source in LOADED_SOURCES


def teacher_saw_student_images(metrics: RunMetrics) -> bool | None:
    """Whether the teacher trained on the student's images: False when it has none of the student's classes
    (teacher.classes says so); for a loaded teacher otherwise None (the run cannot know what it trained on);
    else what the run's split says (its own training images, or a customer hold-out it never saw)."""
    data = metrics.student_data
    if data.get("label_relation") == "disjoint":
        return False
    if teacher_is_loaded(metrics):
        return None
    return data.get("teacher_trained_on_student_images")


def saw_cell(saw: bool | None) -> str:
    return {True: "yes", False: "no", None: "not known"}[saw]


def teacher_training_cells(teacher: ModelRecord) -> tuple[str, str]:
    """The teacher's labelled images (train, selection) as the "What each model used" table shows them."""
    if teacher.source in LOADED_SOURCES:
        if teacher.trained_on:
            return f"as stated by the recipe: {teacher.trained_on}", "-"
        return f"not known (loaded from a {teacher.source})", "not known"
    labelled = teacher.labelled_images
    return ("-", "-") if labelled is None else (str(labelled.train), str(labelled.selection))


# ------------------------------------------------------------------------------------------ data used
DATA_COLUMNS = [
    "model",
    "labelled (train)",
    "labelled (selection)",
    "unlabelled",
    "learns from the teacher",
    "teacher trained on the student's images",
]


def data_rows(metrics: RunMetrics) -> list[list[str]]:
    """What each model learnt from: labelled images for training and for selection, unlabelled images, and
    whether the teacher it learns from had seen the student's images (then it is not a new-data result)."""
    teacher_saw = teacher_saw_student_images(metrics)
    rows = []
    for r in metrics.models:
        labelled = r.labelled_images
        train = "-" if labelled is None else str(labelled.train)
        selection = "-" if labelled is None else str(labelled.selection)
        if r.role == "teacher":
            train, selection = teacher_training_cells(r)
            unlabeled = "not known" if r.source in LOADED_SOURCES and not r.trained_on else "0"
            rows.append([r.name, train, selection, unlabeled, "-", "-"])
            continue
        saw = saw_cell(teacher_saw) if r.uses_teacher else "-"
        rows.append(
            [
                model_label(r),
                train,
                selection,
                str(r.unlabeled_images),
                "yes" if r.uses_teacher else "no",
                saw,
            ]
        )
    return rows


def accuracy_cell(record: ModelRecord, key: str) -> str:
    """``97.31`` for one seed, ``97.31 ± 0.40`` (mean ± sample std) over several."""
    return mean_std_text(getattr(record, key), getattr(record, f"{key}_std"))


def mean_std_text(value: float, std: float | None) -> str:
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def over_seeds_cell(values: list[float | None]) -> str:
    """The values of several seeds as ``mean ± sample std`` (one seed: its value; none: '-')."""
    present = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(present):
        return "-"
    return mean_std_text(float(present.mean()), float(present.std(ddof=1)) if len(present) > 1 else None)


def describe_arch(arch: str, model_args: dict[str, Any]) -> str:
    """``resnet8 (width=8)``: the name alone hides the options budget fitting chose."""
    if not model_args:
        return arch
    return f"{arch} (" + ", ".join(f"{key}={value}" for key, value in model_args.items()) + ")"


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- artifacts
ARTIFACT_COLUMNS = [
    "artifact",
    "runs on",
    "size",
    "params / budget",
    "test acc %",
    "Δ acc",
    "parity",
    "cold start ms",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "img/s",
]


def _fit_cell(budget: BudgetCheck | None, params: int | None) -> str:
    """``params / limit`` of the artifact's student (the deployed one's when not known), OVER past it."""
    if budget is None or budget.budget is None:
        return "-"
    params = budget.params if params is None else params
    return f"{human_count(params)} / {human_count(budget.budget)}" + (
        "" if params <= budget.budget else " OVER"
    )


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def parity_cell(record: ArtifactRecord) -> str:
    parity = record.parity
    if record.format == "pytorch":
        return "reference"
    if parity is None:
        return "unverified"
    if parity.get("failure"):
        return "FAIL"
    return f"ok (max {parity['max_abs']:.1e}, top-1 {100 * parity['top1_agreement']:.1f}%)"


def latency_rows(record: ArtifactRecord) -> list[dict[str, Any]]:
    """One row per timed batch size; empty when the artifact was not timed."""
    latency = record.latency or {}
    return list(latency.get("batches", []))


def cold_start_ms(record: ArtifactRecord) -> float | None:
    cold = (record.latency or {}).get("cold_start")
    if not cold:
        return None
    return cold["load_ms"] + cold["first_inference_ms"]


def ms_cell(value: float | None) -> str:
    """Milliseconds: three decimals below 1 ms, two above."""
    return "-" if value is None else f"{value:.3f}" if value < 1 else f"{value:.2f}"


def artifact_rows(
    artifacts: list[ArtifactRecord],
    budget: BudgetCheck | None = None,
    params_of: dict[str, int] | None = None,
) -> list[list[str]]:
    """One row per artifact and timed batch size (each student's PyTorch row first, as its reference). Where
    several students were exported, each row names its student (`params_of`: each student's parameters)."""
    several = len({record.model for record in artifacts}) > 1
    rows = []
    for record in artifacts:
        name = f"{record.model}: {record.name}" if several and record.model else record.name
        fit = _fit_cell(budget, (params_of or {}).get(record.model or ""))
        runs_on = record.runs_on or "-"
        if not record.built:
            rows.append(
                [name, runs_on, "-", fit, "-", "-", record.status.split(":")[0], "-", "-", "-", "-", "-"]
            )
            continue
        accuracy = "-" if record.test_acc is None else f"{record.test_acc:.2f}"
        # Shown as artifact minus PyTorch (negative: the artifact lost accuracy); `or 0.0` avoids "-0.00".
        drop = "-" if record.format == "pytorch" else f"{(-(record.test_acc_drop or 0.0)) or 0.0:+.2f}"
        timings = latency_rows(record) or [None]
        for index, timing in enumerate(timings):
            label = name if timing is None else f"{name} @b{timing['batch']}"
            first = index == 0
            rows.append(
                [
                    label,
                    runs_on if first else "",
                    human_bytes(record.size_bytes) if first else "",
                    fit if first else "",
                    accuracy if first else "",
                    drop if first else "",
                    parity_cell(record) if first else "",
                    ms_cell(cold_start_ms(record)) if first else "",
                    "-" if timing is None else ms_cell(timing["p50_ms"]),
                    "-" if timing is None else ms_cell(timing["p90_ms"]),
                    "-" if timing is None else ms_cell(timing["p99_ms"]),
                    "-" if timing is None else f"{timing['throughput']:.0f}",
                ]
            )
    return rows


# Nothing exported but the PyTorch student timed (benchmark.enabled): its latency alone, no parity or size.
PYTORCH_LATENCY_COLUMNS = ["model", "runs on", "cold start ms", "p50 ms", "p90 ms", "p99 ms", "img/s"]


@dataclass(frozen=True)
class DeploymentTable:
    """What the report and the CLI show of the deployed student: the exported artifacts (with the PyTorch
    student as their reference), or, with nothing exported, the PyTorch student's latency when it was timed."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    exported: bool
    deployed: str  # which student was deployed: the main method's, and which seed's weights


def deployed_student(metrics: RunMetrics) -> str:
    """``kd`` or, over several seeds, ``kd, seed 0's weights`` (the first seed's student is deployed)."""
    seeds = metrics.run.student_seeds
    name = metrics.deployed.name
    return name if len(seeds) < 2 else f"{name}, seed {seeds[0]}'s weights"


def _student_label(record: ArtifactRecord, metrics: RunMetrics, deployed: str) -> str:
    return deployed if record.model in (None, metrics.deployed.name) else record.model


def artifact_paths(metrics: RunMetrics) -> list[tuple[str, str]]:
    """(what, path relative to the run folder) of every file the run wrote for deployment."""
    several = len({record.model for record in metrics.artifacts}) > 1
    listed = []
    for record in metrics.artifacts:
        if record.path and record.format != "pytorch":
            what = f"{record.model}: {record.name}" if several and record.model else record.name
            listed.append((what, record.path))
    return listed


def deployment_table(metrics: RunMetrics) -> DeploymentTable | None:
    """None when nothing was exported and nothing timed: there is no deployment to show."""
    artifacts = metrics.artifacts
    deployed = deployed_student(metrics)
    if any(record.format != "pytorch" for record in artifacts):
        params_of = {record.name: record.params for record in metrics.models if record.role == "student"}
        rows = artifact_rows(artifacts, metrics.budget_check, params_of)
        return DeploymentTable("Deployment artifacts", ARTIFACT_COLUMNS, rows, True, deployed)
    rows = []
    for record in artifacts:
        for index, timing in enumerate(latency_rows(record)):
            first = index == 0
            rows.append(
                [
                    f"{_student_label(record, metrics, deployed)} ({record.name}) @b{timing['batch']}",
                    (record.runs_on or "-") if first else "",
                    ms_cell(cold_start_ms(record)) if first else "",
                    ms_cell(timing["p50_ms"]),
                    ms_cell(timing["p90_ms"]),
                    ms_cell(timing["p99_ms"]),
                    f"{timing['throughput']:.0f}",
                ]
            )
    if not rows:
        return None
    title = "Latency of the PyTorch student (nothing exported)"
    return DeploymentTable(title, PYTORCH_LATENCY_COLUMNS, rows, False, deployed)


def latency_table_rows(latency: dict[str, Any]) -> list[list[str]]:
    return [
        [
            str(timing["batch"]),
            ms_cell(timing["p50_ms"]),
            ms_cell(timing["p90_ms"]),
            ms_cell(timing["p99_ms"]),
            ms_cell(timing["mean_ms"]),
            ms_cell(timing["std_ms"]),
            f"{timing['throughput']:.0f}",
            str(timing["iterations"]),
        ]
        for timing in latency.get("batches", [])
    ]


BENCH_CSV_COLUMNS = [
    "artifact",
    "format",
    "precision",
    "runs_on",
    "status",
    "path",
    "size_bytes",
    "val_acc",
    "test_acc",
    "test_acc_drop",
    "parity_max_abs",
    "parity_mean_abs",
    "parity_top1_agreement",
    "threads",
    "load_ms",
    "first_inference_ms",
    "batch",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "throughput",
    "others_cores",
    "machine_busy",
]


def bench_csv_rows(artifacts: list[ArtifactRecord]) -> list[dict[str, Any]]:
    rows = []
    for record in artifacts:
        parity = record.parity or {}
        latency = record.latency or {}
        cold = latency.get("cold_start") or {}
        base = {
            "artifact": record.name,
            "format": record.format,
            "precision": record.precision,
            "runs_on": record.runs_on,
            "status": record.status,
            "path": record.path,
            "size_bytes": record.size_bytes,
            "val_acc": record.val_acc,
            "test_acc": record.test_acc,
            "test_acc_drop": record.test_acc_drop,
            "parity_max_abs": parity.get("max_abs"),
            "parity_mean_abs": parity.get("mean_abs"),
            "parity_top1_agreement": parity.get("top1_agreement"),
            "threads": latency.get("threads"),
            "load_ms": cold.get("load_ms"),
            "first_inference_ms": cold.get("first_inference_ms"),
            # how busy the machine was while this artifact was timed (bench/machine_load.py)
            "others_cores": (latency.get("machine_load") or {}).get("others_cores"),
            "machine_busy": (latency.get("machine_load") or {}).get("busy"),
        }
        for timing in latency_rows(record) or [{}]:
            rows.append({**base, **{key: timing.get(key) for key in BENCH_CSV_COLUMNS if key in timing}})
    return rows
