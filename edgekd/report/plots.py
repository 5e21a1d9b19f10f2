"""The report's plots, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from edgekd.fileio import write_atomic
from edgekd.formats import plot_markers
from edgekd.records import ModelRecord, RunMetrics, StageRecord

# Every line of a panel gets its own (colour, line style): matplotlib's cycle repeats its 10 colours, so the
# 11th model of a run would be drawn like the first. The 10 colours solid, then dashed, dotted, dash-dotted
# (40 lines), then the same with a marker on each point.
_LINESTYLES = ("-", "--", ":", "-.")
_LINE_MARKERS = (None, "o", "s", "^", "v", "D", "P", "X")
# Point markers of scatter plots, cycled the same way after each round of the 10 colours.
_POINT_MARKERS = ("o", "v", "^", "<", ">", "P", "X", "*", "h", "d")


def _colour(index: int) -> tuple[float, ...]:
    return plt.get_cmap("tab10").colors[index % 10]


def line_styles(names) -> dict[str, dict[str, Any]]:
    """A distinct (colour, line style[, marker]) per name, in order of first appearance."""
    styles = {}
    for index, name in enumerate(dict.fromkeys(names)):
        round_ = index // 10
        style: dict[str, Any] = {"color": _colour(index), "linestyle": _LINESTYLES[round_ % 4]}
        marker = _LINE_MARKERS[(round_ // 4) % len(_LINE_MARKERS)]
        if marker is not None:
            style.update(marker=marker, markersize=3)
        styles[name] = style
    return styles


def point_styles(names) -> dict[str, dict[str, Any]]:
    """A distinct (colour, marker) per name, for scatter plots."""
    return {
        name: {"color": _colour(index), "marker": _POINT_MARKERS[(index // 10) % len(_POINT_MARKERS)]}
        for index, name in enumerate(dict.fromkeys(names))
    }


def _save(fig, path: Path) -> Path:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def _readable_log_x(ax) -> None:
    """A log x axis labelled at 1, 2 and 5 per decade in plain numbers (0.05, 20000), not 5×10⁻²."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _accuracy_label(record: ModelRecord) -> str:
    std = record.test_acc_std
    return f"{record.test_acc:.2f} %" if std is None else f"{record.test_acc:.2f} ± {std:.2f} %"


def accuracy_vs_params(metrics: RunMetrics, path: Path) -> Path:
    """Test accuracy of every model against its parameter count, with the budget as a vertical line."""
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    # the teacher's embedding with a classifier on top (a probe): no model of its own size
    records = [record for record in metrics.models if record.role != "probe"]
    styles = point_styles(record.name for record in records)
    for record in records:
        style = dict(styles[record.name])
        if record.role == "teacher":
            style["marker"] = "s"
        # A legend, not labels beside the points: students of one budget share their x.
        label = f"{record.name} ({_accuracy_label(record)})"
        ax.scatter(record.params, record.test_acc, s=50, zorder=3, label=label, **style)
    budget = metrics.budget["params"]
    if budget:
        ax.axvline(budget, color="tab:red", linestyle="--", label=f"budget {budget:,} params")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _readable_log_x(ax)
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{metrics.run.name}: accuracy against size")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def stage_metric(row: dict[str, Any]) -> str | None:
    """The history row's own selection metric (`val_<name>`), when its stage is selected on one: such a
    stage (an embedding, dictionaries, a pre-training) has no trained classifier, so its `val_acc` and CE
    are an untrained head's, at chance level, and are not drawn."""
    return next((key for key in row if key.startswith("val_") and key not in ("val_acc", "val_loss")), None)


def _classifier_values(history: list[dict[str, Any]], key: str) -> list[float]:
    return [math.nan if stage_metric(row) else row[key] for row in history]


def _plot_series(ax, epochs: list[int], values: list[float], label: str, style: dict[str, Any]) -> None:
    """A line whose points without a drawn neighbour (a one-epoch stage) get a marker: a line alone would
    not show them."""
    drawn = [not math.isnan(v) for v in values]
    alone = [
        i
        for i, shown in enumerate(drawn)
        if shown and not (i > 0 and drawn[i - 1]) and not (i + 1 < len(drawn) and drawn[i + 1])
    ]
    if alone and "marker" not in style:
        style = {**style, "marker": "o", "markersize": 3, "markevery": alone}
    ax.plot(epochs, values, label=label, **style)


def training_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    return _save(training_curves_figure(histories), path)


def training_curves_figure(histories: dict[str, list[dict[str, Any]]]):
    """Per epoch of every trained model: the validation score each stage is selected on (validation
    accuracy for a classifier, a stage's own metric in a panel of its own) and the training loss."""
    drawn = {name: rows for name, rows in histories.items() if rows}
    metrics = list(
        dict.fromkeys(key for rows in drawn.values() for row in rows if (key := stage_metric(row)))
    )
    fig, axes = plt.subplots(1, 2 + len(metrics), figsize=(5.5 * (2 + len(metrics)), 4), squeeze=False)
    acc_ax, loss_ax, *metric_axes = axes[0]
    styles = line_styles(drawn)
    for name, history in drawn.items():
        epochs = [row["epoch"] for row in history]
        _plot_series(acc_ax, epochs, _classifier_values(history, "val_acc"), name, styles[name])
        _plot_series(loss_ax, epochs, [row["train_loss"] for row in history], name, styles[name])
        for key, ax in zip(metrics, metric_axes, strict=True):
            values = [row.get(key, math.nan) for row in history]
            if any(not math.isnan(v) for v in values):
                _plot_series(ax, epochs, values, name, styles[name])
    acc_ax.set(
        xlabel="epoch",
        ylabel="validation accuracy (%)",
        title="validation accuracy (stages selected on it)",
    )
    loss_ax.set(xlabel="epoch", ylabel="training loss (all terms)", title="training loss", yscale="log")
    for key, ax in zip(metrics, metric_axes, strict=True):
        metric = key.removeprefix("val_")
        ax.set(
            xlabel="epoch",
            ylabel=f"validation {metric}",
            title=f"validation {metric} (stages selected on it)",
        )
    for ax in (acc_ax, loss_ax, *metric_axes):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def accuracy_vs_latency(metrics: RunMetrics, path: Path) -> Path | None:
    """Test accuracy against batch-1 (or smallest batch) p50 latency, one marker per backend and precision."""
    points = []
    for record in metrics.artifacts:
        timings = (record.latency or {}).get("batches") or []
        if timings and record.test_acc is not None:
            points.append((record, timings[0]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    markers = plot_markers()  # the backend catalog's
    colours = line_styles(record.name for record, _ in points)
    for record, timing in points:
        # A legend, not labels beside the points: artifacts of one model often sit a few µs apart.
        ax.scatter(
            timing["p50_ms"],
            record.test_acc,
            marker=markers.get(record.format, "o"),
            color=colours[record.name]["color"],
            s=50,
            zorder=3,
            label=f"{record.name} ({timing['p50_ms']:.3g} ms)",
        )
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _readable_log_x(ax)
    ax.set_xlabel(f"p50 latency at batch {points[0][1]['batch']} (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{metrics.run.name}: accuracy against latency per backend")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def loss_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Unweighted training cross-entropy and validation cross-entropy per epoch of every student.

    The gap between the two curves is what a distillation term is meant to shrink; plotting the same
    loss for every method keeps them comparable (a method's own CE term may be scaled).
    """
    students = {name: rows for name, rows in histories.items() if name != "teacher" and rows}
    if not students or not all("train_task_loss" in rows[0] for rows in students.values()):
        return None
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    styles = line_styles(students)
    for name, rows in students.items():
        epochs = [row["epoch"] for row in rows]
        # a stage selected on its own metric has no trained head: its CE is not drawn
        _plot_series(train_ax, epochs, _classifier_values(rows, "train_task_loss"), name, styles[name])
        _plot_series(val_ax, epochs, _classifier_values(rows, "val_loss"), name, styles[name])
    train_ax.set(
        xlabel="epoch", ylabel="cross-entropy", title="training CE (no distillation term)", yscale="log"
    )
    val_ax.set(xlabel="epoch", title="validation CE")
    for ax in (train_ax, val_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def stage_curves(metrics: RunMetrics, histories: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Per stage of every multi-stage model (first seed): its loss terms per epoch, and the validation score
    its selection rule reads, with the kept epoch marked. None when no model trains in stages."""
    panels = [
        (
            record.name,
            stage,
            [row for row in _first_seed_history(record, histories) if row.get("stage") == stage.stage],
        )
        for record in metrics.models
        if len(record.stages) > 1
        for stage in record.stages
        if stage.skipped is None and not stage.branch  # a check's epochs are not the student's training
    ]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for (model, stage, rows), (loss_ax, score_ax) in zip(panels, axes, strict=True):
        _stage_losses(loss_ax, rows, f"{model} / {stage.stage}: training loss terms")
        _stage_score(score_ax, rows, stage, f"{model} / {stage.stage}: selection ({stage.select})")
    fig.tight_layout()
    return _save(fig, path)


def process_curves(metrics: RunMetrics, path: Path) -> Path | None:
    """Each searched distillation process (DistPro, first seed): α of every pathway over the search steps,
    as the replay stretches it over the student's run (the paper's Fig. 6). None when no model searched one."""
    from edgekd.train.checkpoint import load_checkpoint

    processes = []
    for record in metrics.models:
        for stage in record.stages:
            for artifact in stage.produces:
                if artifact.name == "process" and Path(artifact.path).is_file():
                    # edgekd's own refusal of a file with code in it, never PyTorch's advice to unpickle it
                    payload = load_checkpoint(Path(artifact.path), f"{record.name} process")
                    processes.append((record.name, payload))
    if not processes:
        return None
    fig, axes = plt.subplots(1, len(processes), figsize=(6.5 * len(processes), 4.2), squeeze=False)
    for ax, (model, process) in zip(axes[0], processes, strict=True):
        steps = [step / max(process["searched_steps"], 1) for step in process["steps"]]
        styles = line_styles(process["pathways"])
        for index, name in enumerate(process["pathways"]):
            ax.plot(steps, process["alpha"][:, index].tolist(), label=name, **styles[name])
        ax.set(
            xlabel="training progress (search step / search steps; the replay stretches it over its run)",
            ylabel="pathway weight α",
            title=f"{model}: searched distillation process",
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def _first_seed_history(
    record: ModelRecord, histories: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    if record.name in histories:
        return histories[record.name]
    return histories.get(f"{record.name} seed{record.per_seed[0].seed}", []) if record.per_seed else []


def _stage_losses(ax, rows: list[dict[str, Any]], title: str) -> None:
    epochs = [row["stage_epoch"] for row in rows]
    terms = sorted({key for row in rows for key in row if key.startswith("train_") and key != "train_acc"})
    styles = line_styles(terms)
    for term in terms:
        values = [row.get(term) for row in rows]
        if any(v is not None and v > 0 for v in values):
            ax.plot(epochs, values, label=term.removeprefix("train_"), **styles[term])
    ax.set(xlabel="stage epoch", ylabel="loss", title=title, yscale="log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def _stage_score(ax, rows: list[dict[str, Any]], stage: StageRecord, title: str) -> None:
    epochs = [row["stage_epoch"] for row in rows]
    # the stage's own metric wherever its rows carry one (never an untrained head's accuracy)
    key = stage_metric(rows[0]) or "val_acc"
    ax.plot(epochs, [row[key] for row in rows], marker=".", label=key)
    if stage.best_epoch is not None:
        ax.axvline(stage.best_epoch, color="tab:red", linestyle="--", label=f"kept: epoch {stage.best_epoch}")
    ax.set(xlabel="stage epoch", ylabel="validation score", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def embedding_tsne(
    embeddings: dict[str, tuple[Any, Any]], class_names: list[str], seed: int, path: Path
) -> Path:
    """One t-SNE panel per model: penultimate features of the same test images, coloured by class."""
    from sklearn.manifold import TSNE

    fig, axes = plt.subplots(1, len(embeddings), figsize=(5.2 * len(embeddings), 4.6), squeeze=False)
    for ax, (name, (features, labels)) in zip(axes[0], embeddings.items(), strict=True):
        perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
        points = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(
            features
        )
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab20", s=8)
        ax.set_title(f"{name}: t-SNE of penultimate features")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = scatter.legend_elements()[0]
    fig.legend(handles, class_names[: len(handles)], loc="center right", fontsize=8, title="class")
    return _save(fig, path)


def frontier_plot(points: list[dict[str, Any]], path: Path) -> Path | None:
    """A sweep's artifacts: validation accuracy (what a budget is chosen on) against latency, one marker per
    artifact kind and one colour per budget, the Pareto frontier drawn as a step line."""
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(8.4, 4.6))
    markers = plot_markers()  # the backend catalog's
    budgets = list(dict.fromkeys(point["budget"] for point in points))
    colours = plt.get_cmap("viridis")
    for point in points:
        colour = colours(budgets.index(point["budget"]) / max(1, len(budgets) - 1))
        ax.scatter(
            point["latency_ms"],
            point["val_acc"],
            marker=markers.get(point["artifact"].split()[0], "o"),
            color=colour,
            edgecolors="black" if point["pareto"] else "none",
            s=60 if point["pareto"] else 40,
            zorder=3,
        )
    frontier = sorted((p for p in points if p["pareto"]), key=lambda p: p["latency_ms"])
    ax.step(
        [p["latency_ms"] for p in frontier],
        [p["val_acc"] for p in frontier],
        where="post",
        color="tab:red",
        label="Pareto frontier",
        zorder=2,
    )
    for budget in budgets:
        ax.scatter([], [], color=colours(budgets.index(budget) / max(1, len(budgets) - 1)), label=budget)
    for kind, marker in markers.items():
        if any(point["artifact"].startswith(kind) for point in points):
            ax.scatter([], [], marker=marker, color="grey", label=kind)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _readable_log_x(ax)
    statistic = points[0]["statistic"]
    ax.set_xlabel(f"{statistic} latency at batch {points[0]['batch']} (ms, log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("accuracy against latency over budgets (outlined: on the frontier)")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)
