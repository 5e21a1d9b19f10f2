"""Write a run's report: report.md, history.csv and the plots, from metrics.json's content."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from edgekd.fileio import write_text
from edgekd.recipe import Recipe
from edgekd.report import plots
from edgekd.report.tables import (
    ARTIFACT_COLUMNS,
    BENCH_CSV_COLUMNS,
    SUMMARY_COLUMNS,
    artifact_rows,
    bench_csv_rows,
    human_count,
    markdown_table,
    summary_rows,
)

HISTORY_CSV = "history.csv"
ACCURACY_PLOT = "accuracy_vs_params.png"
CURVES_PLOT = "training_curves.png"
LATENCY_PLOT = "accuracy_vs_latency.png"
BENCH_CSV = "bench.csv"
LOSS_PLOT = "loss_curves.png"
EMBEDDING_PLOT = "embedding_tsne.png"


def history_csv(histories: dict[str, list[dict[str, Any]]]) -> str:
    columns = [
        "model",
        *sorted(
            {key for rows in histories.values() for row in rows for key in row},
            key=lambda k: (k != "epoch", k),
        ),
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for name, rows in histories.items():
        for row in rows:
            writer.writerow({"model": name, **row})
    return out.getvalue()


def bench_csv(metrics: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=BENCH_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(bench_csv_rows(metrics))
    return out.getvalue()


def report_markdown(recipe: Recipe, metrics: dict[str, Any], plot_files: list[str]) -> str:
    choice, data = metrics["student_choice"], metrics["data"]["student"]
    budget = metrics["budget"]["params"]
    lines = [
        f"# edgekd run `{recipe.name}`",
        "",
        f"- data: {data['dataset']}, {data['num_classes']} classes, train/val/test = "
        f"{data['sizes']['train']}/{data['sizes']['val']}/{data['sizes']['test']} images",
        f"- student: `{choice['arch']}` {choice['model_args'] or ''} — {human_count(choice['params'])} params, "
        f"{human_count(choice['flops'])} FLOPs per image ({choice['how']})",
        f"- budget: {f'{budget:,} params' if budget else 'none'}; method `{recipe.distill.method}`, "
        f"baselines: {', '.join(recipe.distill.baselines) or 'none'}",
        f"- seed {recipe.seed}, device {metrics['run']['device']}, wall time {metrics['run']['wall_time_s']:.1f} s",
        "",
        "## Models",
        "",
        markdown_table(SUMMARY_COLUMNS, summary_rows(metrics)),
        "",
        "Accuracies are top-1 on the held-out test split; models are selected by validation accuracy only. "
        "`OVER` marks a model that breaks the budget (a fine-tuned teacher does, by design).",
        "",
    ]
    lines += unlabeled_lines(metrics)
    extra = [r for r in metrics["models"] if r.get("extra_training_params")]
    if extra:
        lines += [
            "Training-only parameters (connectors; not exported): "
            + ", ".join(f"{r['name']} {r['extra_training_params']:,}" for r in extra),
            "",
        ]
    lines += artifact_section(metrics)
    for name in plot_files:
        lines += [f"![{name}]({name})", ""]
    lines += [
        "Files: `metrics.json` (all numbers), `history.csv` (per-epoch), `bench.csv` (per artifact and batch), "
        "`recipe.yaml` (resolved recipe), `models/` (weights), `artifacts/` (deployables), "
        "`train/` (resumable training state).",
        "",
    ]
    return "\n".join(lines)


def unlabeled_lines(metrics: dict[str, Any]) -> list[str]:
    """Which students also trained on unlabelled images: their accuracies are not label-for-label fair."""
    unlabeled = metrics["data"]["student"].get("unlabeled") or {}
    if not unlabeled.get("images"):
        return []
    users = [r["name"] for r in metrics["models"] if r.get("unlabeled_images")]
    others = [
        r["name"] for r in metrics["models"] if r["role"] == "student" and not r.get("unlabeled_images")
    ]
    return [
        f"Unlabelled images ({unlabeled['images']:,}, `data.unlabeled: {unlabeled['source']}`) fed the "
        f"distillation terms of: {', '.join(users) or 'none'}; not used by: {', '.join(others) or 'none'} "
        "(no label-free term).",
        "",
    ]


def artifact_section(metrics: dict[str, Any]) -> list[str]:
    artifacts = metrics.get("artifacts") or []
    if not artifacts:
        return []
    env = metrics.get("environment") or {}
    lines = [
        "## Deployment artifacts",
        "",
        markdown_table(ARTIFACT_COLUMNS, artifact_rows(metrics)),
        "",
        "Parity: every artifact and the PyTorch student ran on the same validation images (max absolute logit "
        "difference, top-1 agreement). Accuracy: top-1 on the test split through the artifact's own runtime; "
        "drop against the PyTorch student. Latency: cold start = load + first inference; p50/p90/p99 over "
        "timed runs after warm-up; img/s measured at that batch size.",
        "",
    ]
    if env:
        lines += [
            f"Measured on: {env.get('cpu', '?')}, threads {env.get('threads') or 'the runtime default'}.",
            "",
        ]
    for record in artifacts:
        command = record.get("details", {}).get("trtexec")
        if command:
            lines += [f"`{record['name']}`: {record['status']}:", "", "```", command, "```", ""]
    return lines


def write_report(
    run_dir: Path,
    recipe: Recipe,
    metrics: dict[str, Any],
    histories: dict[str, list[dict]],
    embeddings: dict[str, tuple[Any, Any]] | None = None,
) -> Path:
    run_dir = Path(run_dir)
    write_text(run_dir / HISTORY_CSV, history_csv(histories))
    write_text(run_dir / BENCH_CSV, bench_csv(metrics))
    plot_files = []
    if recipe.report.plots:
        plots.accuracy_vs_params(metrics, run_dir / ACCURACY_PLOT)
        plots.training_curves(histories, run_dir / CURVES_PLOT)
        plot_files = [ACCURACY_PLOT, CURVES_PLOT]
        if plots.accuracy_vs_latency(metrics, run_dir / LATENCY_PLOT) is not None:
            plot_files.append(LATENCY_PLOT)
        if recipe.report.loss_curves and plots.loss_curves(histories, run_dir / LOSS_PLOT) is not None:
            plot_files.append(LOSS_PLOT)
        if embeddings:
            class_names = metrics["data"]["student"]["class_names"]
            plots.embedding_tsne(embeddings, class_names, recipe.seed, run_dir / EMBEDDING_PLOT)
            plot_files.append(EMBEDDING_PLOT)
    return write_text(run_dir / "report.md", report_markdown(recipe, metrics, plot_files))
