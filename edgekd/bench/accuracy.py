"""Top-1 accuracy of any runner on labelled images: an artifact is scored through its own runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekd.bench.runners.base import Runner
from edgekd.errors import EdgekdError

DEFAULT_BATCH = 256


@dataclass(frozen=True)
class AccuracyResult:
    """Top-1 accuracy in percent over ``total`` images, with the logits it was computed from."""

    accuracy: float
    correct: int
    total: int
    logits: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """The numbers without the logits (which belong in no JSON file)."""
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total}


def batched_logits(runner: Runner, images: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """The runner's logits for every image, computed ``batch_size`` images at a time (the last batch smaller).

    The runner is loaded first if it is not yet.
    """
    images = _check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EdgekdError(f"batch_size: got {batch_size!r}; allowed: an integer >= 1")
    runner.load()
    parts = [
        np.asarray(runner.run(images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    logits = np.concatenate(parts)
    if logits.ndim != 2 or len(logits) != len(images):
        raise EdgekdError(
            f"{runner.backend} runner: returned logits of shape {logits.shape} for {len(images)} images; "
            "expected one row per image"
        )
    return logits


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of rows whose largest logit is at the label's index."""
    logits, labels = np.asarray(logits), _check_labels(labels, len(logits))
    if logits.ndim != 2:
        raise EdgekdError(f"logits: shape {logits.shape} is not allowed; give N×classes")
    if labels.max() >= logits.shape[1]:
        raise EdgekdError(
            f"labels: value {int(labels.max())} is not allowed; the logits have {logits.shape[1]} classes"
        )
    return 100.0 * float((logits.argmax(axis=1) == labels).mean())


def evaluate_accuracy(
    runner: Runner, images: np.ndarray, labels: np.ndarray, batch_size: int = DEFAULT_BATCH
) -> AccuracyResult:
    """Run ``runner`` over all ``images`` in batches and score its top-1 predictions against ``labels``."""
    labels = _check_labels(labels, len(images))
    logits = batched_logits(runner, images, batch_size)
    accuracy = top1_accuracy(logits, labels)
    return AccuracyResult(
        accuracy=accuracy,
        correct=int((logits.argmax(axis=1) == labels).sum()),
        total=len(labels),
        logits=logits,
    )


def _check_images(images: Any) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or len(images) == 0:
        shape = getattr(images, "shape", type(images).__name__)
        raise EdgekdError(f"images: {shape} is not allowed; give a numpy array N×C×H×W with N >= 1")
    return images


def _check_labels(labels: Any, count: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer) or count == 0:
        raise EdgekdError(
            f"labels: shape {labels.shape} dtype {labels.dtype} is not allowed; give {count} integer class "
            "indices, one per image"
        )
    if labels.min() < 0:
        raise EdgekdError(f"labels: value {int(labels.min())} is not allowed; class indices start at 0")
    return labels
