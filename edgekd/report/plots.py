"""The report's plots, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from edgekd.fileio import write_atomic


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


def _accuracy_label(record: dict[str, Any]) -> str:
    std = record.get("test_acc_std")
    return f"{record['test_acc']:.2f} %" if std is None else f"{record['test_acc']:.2f} ± {std:.2f} %"


def accuracy_vs_params(metrics: dict[str, Any], path: Path) -> Path:
    """Test accuracy of every model against its parameter count, with the budget as a vertical line."""
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    for record in metrics["models"]:
        if record["role"] == "probe":
            continue  # the teacher's embedding with a classifier on top: no model of its own size
        marker = "s" if record["role"] == "teacher" else "o"
        # A legend, not labels beside the points: students of one budget share their x.
        label = f"{record['name']} ({_accuracy_label(record)})"
        ax.scatter(record["params"], record["test_acc"], marker=marker, s=50, zorder=3, label=label)
    budget = metrics["budget"]["params"]
    if budget:
        ax.axvline(budget, color="tab:red", linestyle="--", label=f"budget {budget:,} params")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _readable_log_x(ax)
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{metrics['run']['name']}: accuracy against size")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def training_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Validation accuracy and training loss per epoch of every trained model."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in histories.items():
        if not history:
            continue
        epochs = [row["epoch"] for row in history]
        acc_ax.plot(epochs, [row["val_acc"] for row in history], label=name)
        loss_ax.plot(epochs, [row["train_loss"] for row in history], label=name)
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    loss_ax.set(xlabel="epoch", ylabel="training loss (all terms)", title="training loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
    return _save(fig, path)


def accuracy_vs_latency(metrics: dict[str, Any], path: Path) -> Path | None:
    """Test accuracy against batch-1 (or smallest batch) p50 latency, one marker per backend and precision."""
    points = []
    for record in metrics.get("artifacts", []):
        timings = (record.get("latency") or {}).get("batches") or []
        if timings and record.get("test_acc") is not None:
            points.append((record, timings[0]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    markers = {"pytorch": "s", "onnx": "o", "openvino": "D", "tensorrt": "^"}
    for record, timing in points:
        # A legend, not labels beside the points: artifacts of one model often sit a few µs apart.
        ax.scatter(
            timing["p50_ms"],
            record["test_acc"],
            marker=markers.get(record["format"], "o"),
            s=50,
            zorder=3,
            label=f"{record['name']} ({timing['p50_ms']:.3g} ms)",
        )
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _readable_log_x(ax)
    ax.set_xlabel(f"p50 latency at batch {points[0][1]['batch']} (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{metrics['run']['name']}: accuracy against latency per backend")
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
    for name, rows in students.items():
        epochs = [row["epoch"] for row in rows]
        train_ax.plot(epochs, [row["train_task_loss"] for row in rows], label=name)
        val_ax.plot(epochs, [row["val_loss"] for row in rows], label=name)
    train_ax.set(
        xlabel="epoch", ylabel="cross-entropy", title="training CE (no distillation term)", yscale="log"
    )
    val_ax.set(xlabel="epoch", title="validation CE")
    for ax in (train_ax, val_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


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
