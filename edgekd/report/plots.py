"""The report's plots, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from edgekd.fileio import write_atomic


def _save(fig, path: Path) -> Path:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def accuracy_vs_params(metrics: dict[str, Any], path: Path) -> Path:
    """Test accuracy of every model against its parameter count, with the budget as a vertical line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for record in metrics["models"]:
        marker = "s" if record["role"] == "teacher" else "o"
        ax.scatter(record["params"], record["test_acc"], marker=marker, s=50, zorder=3)
        ax.annotate(
            record["name"],
            (record["params"], record["test_acc"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=9,
        )
    budget = metrics["budget"]["params"]
    if budget:
        ax.axvline(budget, color="tab:red", linestyle="--", label=f"budget {budget:,} params")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
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
