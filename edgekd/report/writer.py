"""Write a run's report: report.md, history.csv and the plots, from metrics.json's content."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from edgekd.fileio import write_text
from edgekd.recipe import Recipe
from edgekd.report import plots
from edgekd.report.tables import SUMMARY_COLUMNS, human_count, markdown_table, summary_rows

HISTORY_CSV = "history.csv"
ACCURACY_PLOT = "accuracy_vs_params.png"
CURVES_PLOT = "training_curves.png"


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
    extra = [r for r in metrics["models"] if r.get("extra_training_params")]
    if extra:
        lines += [
            "Training-only parameters (connectors; not exported): "
            + ", ".join(f"{r['name']} {r['extra_training_params']:,}" for r in extra),
            "",
        ]
    for name in plot_files:
        lines += [f"![{name}]({name})", ""]
    lines += [
        "Files: `metrics.json` (all numbers), `history.csv` (per-epoch), `recipe.yaml` (resolved recipe), "
        "`models/` (weights), `train/` (resumable training state).",
        "",
    ]
    return "\n".join(lines)


def write_report(
    run_dir: Path, recipe: Recipe, metrics: dict[str, Any], histories: dict[str, list[dict]]
) -> Path:
    run_dir = Path(run_dir)
    write_text(run_dir / HISTORY_CSV, history_csv(histories))
    plot_files = []
    if recipe.report.plots:
        plots.accuracy_vs_params(metrics, run_dir / ACCURACY_PLOT)
        plots.training_curves(histories, run_dir / CURVES_PLOT)
        plot_files = [ACCURACY_PLOT, CURVES_PLOT]
    return write_text(run_dir / "report.md", report_markdown(recipe, metrics, plot_files))
