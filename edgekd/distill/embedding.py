"""Embeddings: a network's penultimate features, L2-normalised, and what they are worth without a
classifier: nearest-neighbour accuracy and the NMI of a k-means clustering.

The penultimate features are the classifier's input *before* any dropout the network applies to it
(torchvision's MobileNets and EfficientNets drop 20 % of it in train mode): a model names that point in
``model.embedding_path`` (see models/torchvision_models.py); zoo models apply no dropout there, so theirs is
the classifier's input. A dropped-out embedding would make the student's triplets and distances noisy while
the teacher's (in eval mode) are clean.

REFILLED distils in this space; its embedding stage is selected by the validation 1-NN accuracy here, the
teacher-embedding baselines (1-NN, logistic regression) classify in it, and the report gives each student's
NMI beside its accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.base import Distiller
from edgekd.distill.features import FeatureCapture, Tap
from edgekd.distill.plan import Artifact, Stage, split_epochs
from edgekd.models._common import evaluating


def embedding_tap(model: nn.Module) -> Tap:
    """Where `model`'s embedding is read: the input of its `embedding_path` module, else its classifier's."""
    return Tap("embedding", getattr(model, "embedding_path", "classifier"), "input")


# What an embedding stage hands on: the student's weights, its classifier untrained.
EMBEDDING_WEIGHTS = Artifact(
    "embedding", "embedding.pt", "student", "the student's weights after its embedding stage"
)


def embedding_then_classifier(
    field: str,
    embedding_epochs: int | None,
    train,
    embedding: tuple[type[Distiller], str],
    classifier: tuple[type[Distiller], str],
) -> list[Stage]:
    """The two-stage plan of an embedding method (REFILLED, RKD + fine-tuning): an embedding stage selected
    by its own metric, whose weights a classifier stage with a fresh head takes on for the rest of
    train.epochs. `embedding`/`classifier`: each stage's objective and summary."""
    first = split_epochs(field, embedding_epochs, train.epochs)
    return [
        Stage("embedding", *embedding, "metric", first, produces=(EMBEDDING_WEIGHTS,)),
        Stage(
            "classifier",
            *classifier,
            None,
            train.epochs - first,
            fresh_head=True,
            consumes=(EMBEDDING_WEIGHTS,),
        ),
    ]


def embed(capture: FeatureCapture, images: torch.Tensor) -> torch.Tensor:
    """The L2-normalised embedding of `images` under `capture` (a capture of the model's embedding_tap)."""
    _, (features,) = capture.run(images)
    return F.normalize(features.flatten(1), dim=1)


@torch.no_grad()
def embed_all(model: nn.Module, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Normalised embeddings (float64) and labels of every batch of `loader`, the model in eval mode."""
    capture = FeatureCapture(model, [embedding_tap(model)])
    vectors, labels = [], []
    with evaluating(model):
        for images, batch_labels in loader:
            vectors.append(embed(capture, images.to(device)).cpu().double())
            labels.append(batch_labels)
    return torch.cat(vectors).numpy(), torch.cat(labels).numpy()


def nearest_neighbour_accuracy(
    gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray
) -> float:
    """Top-1 accuracy (%) of labelling each query with its nearest gallery image's label (cosine =
    Euclidean on normalised vectors; ties go to the first gallery image)."""
    if not len(queries):
        return 0.0
    nearest = np.argmax(queries @ gallery.T, axis=1)
    return 100.0 * float(np.mean(gallery_labels[nearest] == query_labels))


def clustering_nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Normalised mutual information between the labels and a k-means clustering (k = number of classes)
    of the embeddings: 1 when the clusters are the classes, 0 when they say nothing about them."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    classes = len(np.unique(labels))
    if classes < 2:
        return 0.0
    clusters = KMeans(n_clusters=classes, n_init=10, random_state=seed).fit_predict(embeddings)
    return float(normalized_mutual_info_score(labels, clusters))


class EmbeddingStage(Distiller):
    """A stage that trains the student's embedding only (its classifier gets neither gradient nor weight
    decay) and keeps the epoch of best validation 1-NN accuracy, training images as the gallery: a score
    that needs no classifier."""

    selection_metric_name = "knn_acc"

    def trainable_parameters(self):
        head = {id(p) for p in self.student.classifier.parameters()}
        return [p for p in self.student.parameters() if p.requires_grad and id(p) not in head]

    def selection_metric(self, data, device) -> float:
        gallery, gallery_labels = embed_all(self.student, data.eval_loader("train"), device)
        queries, query_labels = embed_all(self.student, data.eval_loader("val"), device)
        return nearest_neighbour_accuracy(gallery, gallery_labels, queries, query_labels)
