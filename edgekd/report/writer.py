"""Write a run's report: report.md, history.csv and the plots, from metrics.json's content."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from edgekd.fileio import write_text
from edgekd.layout import RunLayout
from edgekd.recipe import Recipe
from edgekd.records import RunMetrics, StageRecord
from edgekd.report import plots
from edgekd.report.tables import (
    ARTIFACT_COLUMNS,
    BENCH_CSV_COLUMNS,
    DATA_COLUMNS,
    artifact_rows,
    bench_csv_rows,
    data_rows,
    human_count,
    markdown_table,
    over_seeds_cell,
    summary_columns,
    summary_rows,
)

ACCURACY_PLOT = "accuracy_vs_params.png"
CURVES_PLOT = "training_curves.png"
LATENCY_PLOT = "accuracy_vs_latency.png"
LOSS_PLOT = "loss_curves.png"
EMBEDDING_PLOT = "embedding_tsne.png"
STAGES_PLOT = "stages.png"
PROCESS_PLOT = "distillation_process.png"


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


def bench_csv(metrics: RunMetrics) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=BENCH_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(bench_csv_rows(metrics.artifacts))
    return out.getvalue()


def report_markdown(recipe: Recipe, metrics: RunMetrics, plot_files: list[str]) -> str:
    choice, data = metrics.student_choice, metrics.student_data
    budget = metrics.budget["params"]
    lines = [
        f"# edgekd run `{recipe.name}`",
        "",
        f"- data: {data['dataset']}, {data['num_classes']} classes, train/val/test = "
        f"{data['sizes']['train']}/{data['sizes']['val']}/{data['sizes']['test']} images",
        f"- student: `{choice.arch}` {choice.model_args or ''} — {human_count(choice.params)} params, "
        f"{human_count(choice.flops)} FLOPs per image ({choice.how})",
        f"- budget: {f'{budget:,} params' if budget else 'none'}; method `{recipe.distill.method}`, "
        f"baselines: {', '.join(recipe.distill.baselines) or 'none'}",
        f"- seed {recipe.seed}, device {metrics.run.device}, wall time {metrics.run.wall_time_s:.1f} s",
        "",
        "## Models",
        "",
        markdown_table(summary_columns(metrics), summary_rows(metrics)),
        "",
        "Accuracies are top-1 on the held-out test split (mean ± sample std over seeds); models are selected "
        "on the validation images only. `OVER` marks a model that breaks the budget (a fine-tuned teacher "
        "does, by design).",
        "",
    ]
    lines += paired_lines(metrics)
    lines += protocol_lines(recipe, metrics)
    lines += ["### What each model used", "", markdown_table(DATA_COLUMNS, data_rows(metrics)), ""]
    lines += unlabeled_lines(metrics)
    extra = [r for r in metrics.models if r.extra_training_params]
    if extra:
        lines += [
            "Training-only parameters (connectors; not exported): "
            + ", ".join(f"{r.name} {r.extra_training_params:,}" for r in extra),
            "",
        ]
    lines += stage_lines(metrics)
    lines += transfer_check_lines(metrics)
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


STAGE_COLUMNS = [
    "model",
    "stage",
    "epochs",
    "kept",
    "selected epoch",
    "selection score",
    "parameters trained",
    "labelled (train / selection)",
    "unlabelled",
    "artifacts",
    "notes",
]


def stage_lines(metrics: RunMetrics) -> list[str]:
    """Each multi-stage model's stages (first seed): what each trained, on which images, which epoch it
    kept and why, and the artifacts it handed on."""
    rows = []
    for record in metrics.models:
        if len(record.stages) < 2:
            continue
        for stage in record.stages:
            rows.append(stage_row(record.name, stage))
    if not rows:
        return []
    return [
        "### Stages",
        "",
        "Methods that train in stages, first seed: each stage's own optimizer and schedule ran over the "
        "parameters it trains, on the images shown, and kept the epoch its rule chose (`metric`: the stage's "
        "own validation score, e.g. the embedding's 1-NN accuracy). Artifacts: what a stage handed on "
        "(→, saved in its folder) or took in (←); `loaded` ones come from another run.",
        "",
        markdown_table(STAGE_COLUMNS, rows),
        "",
    ]


def stage_row(model: str, stage: StageRecord) -> list[str]:
    if stage.skipped:
        return [model, stage.stage, "0", "-", "-", "-", "0", "-", "-", stage.skipped, "-"]
    score = stage.best_score
    data = stage.data
    handed = [f"→ {a.name}" for a in stage.produces]
    handed += [f"← {a.name}" + (" (loaded)" if a.origin == "loaded" else "") for a in stage.consumes]
    return [
        model,
        stage.stage,
        str(stage.epochs),
        stage.select,
        str(stage.best_epoch),
        "-" if score is None else f"{score:.2f}",
        f"{stage.trained_params:,}",
        "-" if data is None else f"{data.labelled_train} / {data.labelled_selection}",
        "-" if data is None else str(data.unlabeled),
        ", ".join(handed) or "-",
        stage_notes(stage),
    ]


def stage_notes(stage: StageRecord) -> str:
    """What the stage's objective said it did, its numbers on the validation images, and for a check its
    accuracies."""
    parts = [stage.notes] if stage.notes else []
    parts += [f"{name} {value:.4g}" for name, value in stage.measures.items()]
    if stage.branch:
        parts.append(f"check val {stage.best_val_acc:.2f} %, test {stage.test_acc:.2f} %")
    return "; ".join(parts) or "-"


def transfer_check_lines(metrics: RunMetrics) -> list[str]:
    """The intermediate-transfer checks (SRM paper's Table II) over seeds: accuracy of a fresh classifier
    trained with CE from each pre-trained student."""
    rows = []
    for record in metrics.models:
        seeds = [run.stages for run in record.per_seed] or [record.stages]
        for name in dict.fromkeys(s.stage for stages in seeds for s in stages if s.branch):
            checks = [s for stages in seeds for s in stages if s.branch and s.stage == name]
            rows.append(
                [
                    record.name,
                    name,
                    checks[0].notes or "-",
                    str(len(checks)),
                    over_seeds_cell([c.best_val_acc for c in checks]),
                    over_seeds_cell([c.test_acc for c in checks]),
                ]
            )
    if not rows:
        return []
    return [
        "### Quality of the intermediate transfer",
        "",
        "After the pre-training stage, a fresh classifier trained with cross-entropy alone (no teacher): how "
        "good a starting point each pre-training made (SRM paper, Table II). A check hands nothing on; it is "
        "reported, never used to choose anything. Mean ± std over seeds.",
        "",
        markdown_table(["model", "stage", "what trained", "seeds", "val acc %", "test acc %"], rows),
        "",
    ]


def paired_lines(metrics: RunMetrics) -> list[str]:
    """The paired comparisons spelled out: per-seed differences, mean, interval and what it shows."""
    compared = [r for r in metrics.models if r.paired]
    if not compared:
        return []
    first = compared[0].paired
    lines = [
        f"### Paired comparison with `{first.reference}`",
        "",
        f"Per seed, each student's test accuracy minus `{first.reference}`'s on the same seed (same "
        "images, same test set); the interval is on the mean difference "
        + (
            f"({100 * first.confidence:.0f} %, {_interval_name(first.interval_method)}). "
            '"better"/"worse": the interval excludes zero.'
            if first.interval is not None
            else "(one seed: no interval; train with --seeds for one)."
        ),
        "",
    ]
    for record in compared:
        paired = record.paired
        per_seed = ", ".join(f"{d:+.2f}" for d in paired.differences)
        interval = "" if paired.interval is None else " [{:+.2f}, {:+.2f}]".format(*paired.interval)
        lines.append(
            f"- `{record.name}`: {paired.mean:+.2f}{interval} — {paired.verdict} "
            f"(seeds {', '.join(map(str, paired.seeds))}: {per_seed})"
        )
    return [*lines, ""]


def _interval_name(method: str) -> str:
    return "Student's t over seeds" if method == "t" else "percentile bootstrap over seeds"


def protocol_lines(recipe: Recipe, metrics: RunMetrics) -> list[str]:
    """Where the student's images came from, and what the teacher had seen of them."""
    data = metrics.student_data
    if data.get("student_pool") == "customer":
        pool = (
            f"a customer hold-out ({100 * data['customer_fraction']:.0f} % of each class of the training "
            "split) that the teacher never trained on"
        )
    else:
        pool = "the teacher's own training images (the SKD paper's protocol: the teacher has seen them, labelled)"
    draws = data.get("draw_seeds") or []
    if data.get("draws") == "per_seed" and len(draws) > 1:
        draw = "drawn anew for each seed (every method of one seed gets the same draw)"
    elif data.get("draws") == "per_seed":
        draw = "drawn for the seed"
    else:
        draw = "one fixed draw for every seed"
    val = data.get("val_source", "validation split")
    per_class = data.get("val_per_class")
    val_text = (
        f"{per_class} per class from the {val}" if per_class else f"the whole {val} of the student's classes"
    )
    lines = [
        "### Protocol",
        "",
        f"- the student's images come from {pool}; its labelled images are {draw};",
        f"- model selection: `train.select: {recipe.train.select}` on {data['sizes']['val']} labelled validation "
        f"images ({val_text});",
        f"- training batches: `data.last_batch: {data.get('last_batch', 'keep')}`, the smallest holds "
        f"{data.get('smallest_train_batch', '?')} images;",
    ]
    unlabeled = data.get("unlabeled") or {}
    if unlabeled.get("images") and unlabeled.get("teacher_acc") is not None:
        lines.append(
            f"- the teacher's top-1 on the student's {unlabeled['images']:,} unlabelled images is "
            f"{unlabeled['teacher_acc']:.2f} % (near 100 % means it trained on them: its outputs there are "
            "close to the true labels);"
        )
    env = metrics.environment
    lines.append(
        f"- trained on {env.get('cpu', '?')} ({env.get('cpu_vendor') or '?'}; "
        f"{', '.join(env.get('cpu_isa') or []) or '?'}), {env.get('torch_threads', '?')} PyTorch threads: "
        "bit-exact on this machine and thread count, not across CPUs."
    )
    return [*lines, ""]


def unlabeled_lines(metrics: RunMetrics) -> list[str]:
    """Which students also trained on unlabelled images: their accuracies are not label-for-label fair."""
    unlabeled = metrics.student_data.get("unlabeled") or {}
    if not unlabeled.get("images"):
        return []
    users = [r.name for r in metrics.models if r.unlabeled_images]
    others = [r.name for r in metrics.models if r.role == "student" and not r.unlabeled_images]
    return [
        f"Unlabelled images ({unlabeled['images']:,}, `data.unlabeled: {unlabeled['source']}`) fed the "
        f"distillation terms of: {', '.join(users) or 'none'}; not used by: {', '.join(others) or 'none'} "
        "(no label-free term).",
        "",
    ]


def artifact_section(metrics: RunMetrics) -> list[str]:
    artifacts = metrics.artifacts
    if not artifacts:
        return []
    env = metrics.environment
    lines = [
        "## Deployment artifacts",
        "",
        markdown_table(ARTIFACT_COLUMNS, artifact_rows(artifacts, metrics.budget_check)),
        "",
        "Parity: every artifact and the PyTorch student ran on the same validation images (max absolute logit "
        "difference, top-1 agreement). Accuracy: top-1 on the test split through the artifact's own runtime; "
        "drop against the PyTorch student. Latency: cold start = load + first inference; p50/p90/p99 over "
        "timed runs after warm-up, each the bare inference call on a batch bound once (as benchmark_app "
        "times an InferRequest); img/s measured at that batch size.",
        "",
    ]
    if env:
        lines += [
            f"Measured on: {env.get('cpu', '?')}, threads {env.get('threads') or 'the runtime default'}.",
            "",
        ]
    for record in artifacts:
        command = record.details.get("trtexec")
        if command:
            lines += [f"`{record.name}`: {record.status}:", "", "```", command, "```", ""]
    return lines


def write_report(
    layout: RunLayout,
    recipe: Recipe,
    metrics: RunMetrics,
    histories: dict[str, list[dict]],
    embeddings: dict[str, tuple[Any, Any]] | None = None,
) -> Path:
    write_text(layout.history_csv, history_csv(histories))
    write_text(layout.bench_csv, bench_csv(metrics))
    return write_text(
        layout.report_md,
        report_markdown(recipe, metrics, write_plots(layout, recipe, metrics, histories, embeddings)),
    )


def write_plots(
    layout: RunLayout,
    recipe: Recipe,
    metrics: RunMetrics,
    histories: dict[str, list[dict]],
    embeddings: dict[str, tuple[Any, Any]] | None,
) -> list[str]:
    """Draw the report's plots; their file names, in the order the report shows them."""
    if not recipe.report.plots:
        return []
    plots.accuracy_vs_params(metrics, layout.plot(ACCURACY_PLOT))
    plots.training_curves(histories, layout.plot(CURVES_PLOT))
    plot_files = [ACCURACY_PLOT, CURVES_PLOT]
    if plots.accuracy_vs_latency(metrics, layout.plot(LATENCY_PLOT)) is not None:
        plot_files.append(LATENCY_PLOT)
    if recipe.report.loss_curves and plots.loss_curves(histories, layout.plot(LOSS_PLOT)) is not None:
        plot_files.append(LOSS_PLOT)
    if plots.stage_curves(metrics, histories, layout.plot(STAGES_PLOT)) is not None:
        plot_files.append(STAGES_PLOT)
    if plots.process_curves(metrics, layout.plot(PROCESS_PLOT)) is not None:
        plot_files.append(PROCESS_PLOT)
    if embeddings:
        class_names = metrics.student_data["class_names"]
        plots.embedding_tsne(embeddings, class_names, recipe.seed, layout.plot(EMBEDDING_PLOT))
        plot_files.append(EMBEDDING_PLOT)
    return plot_files
