"""Baselines that train no student: the frozen teacher's embedding, classified on the student's task.

`teacher_knn` labels each image with its nearest labelled training image in the teacher's (normalised)
embedding; `teacher_logreg` fits scikit-learn's logistic regression on those embeddings, its regularisation
chosen on the validation split. Both show what the teacher's features alone are worth on the student's
classes (the REFILLED paper's first baselines); neither is a deployable small model, so they are reported
beside the students, paired by seed like them, but never exported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.data import DataBundle
from edgekd.distill.embedding import embed_all, nearest_neighbour_accuracy

PROBES = {
    "teacher_knn": "teacher embedding + 1-NN",
    "teacher_logreg": "teacher embedding + logistic regression",
}
# Inverse regularisation strengths tried on the validation split.
LOGREG_C = (0.01, 0.1, 1.0, 10.0, 100.0)


Embeddings = dict[str, tuple[np.ndarray, np.ndarray]]


def teacher_embeddings(teacher: nn.Module, data: DataBundle, device: torch.device) -> Embeddings:
    """The teacher's normalised embeddings and labels of the student's train, val and test images."""
    return {split: embed_all(teacher, data.eval_loader(split), device) for split in ("train", "val", "test")}


def probe_accuracies(
    probe: str,
    teacher: nn.Module,
    data: DataBundle,
    device: torch.device,
    embeddings: Embeddings | None = None,
) -> dict[str, Any]:
    """Validation and test accuracy (%) of one probe on one student view (one seed's draw); `embeddings`
    (from teacher_embeddings) spare the teacher's passes when several probes read the same view."""
    embeddings = embeddings or teacher_embeddings(teacher, data, device)
    (train, train_labels), (val, val_labels), (test, test_labels) = (
        embeddings["train"],
        embeddings["val"],
        embeddings["test"],
    )
    if probe == "teacher_knn":
        return {
            "val_acc": nearest_neighbour_accuracy(train, train_labels, val, val_labels),
            "test_acc": nearest_neighbour_accuracy(train, train_labels, test, test_labels),
        }
    if probe == "teacher_logreg":
        return _logistic_regression(train, train_labels, val, val_labels, test, test_labels)
    raise ValueError(f"unknown probe {probe!r}")


def _logistic_regression(train, train_labels, val, val_labels, test, test_labels) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    best: tuple[float, float, Any] | None = None
    for c in LOGREG_C:
        model = LogisticRegression(C=c, max_iter=5000).fit(train, train_labels)
        val_acc = 100.0 * float(np.mean(model.predict(val) == val_labels))
        if best is None or val_acc > best[0]:  # ties keep the stronger regularisation (smaller C)
            best = (val_acc, c, model)
    assert best is not None
    val_acc, c, model = best
    test_acc = 100.0 * float(np.mean(model.predict(test) == test_labels))
    return {"val_acc": val_acc, "test_acc": test_acc, "logreg_c": c}
