"""Relational knowledge distillation (Park et al. 2019): match the geometry of the batch's embeddings.

Embeddings are the penultimate features, the input of each network's ``classifier`` before any dropout
(embedding.embedding_tap), so their widths need not match. Distance term: pairwise Euclidean distances, each
network's divided by its mean over distinct pairs, compared with the Huber (smooth L1) loss. Angle term: for
every triple (i, j, k) with i != j and k != j, the cosine of the angle at x_j between x_i - x_j and
x_k - x_j, compared the same way.
loss = CE + 25 * distance + 50 * angle (the weights RepDistiller uses on CIFAR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.distill.base import Distiller
from edgekd.distill.embedding import embedding_tap
from edgekd.distill.features import FeatureCapture
from edgekd.distill.registry import implements
from edgekd.errors import EdgekdError
from edgekd.train.dist import whole_batch

_EPS = 1e-12


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances, with a zero diagonal whose gradient is zero (not NaN)."""
    gram = embeddings @ embeddings.T
    squared_norms = gram.diagonal()
    squared = (squared_norms[:, None] + squared_norms[None, :] - 2 * gram).clamp_min(_EPS)
    off_diagonal = ~torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    return squared.sqrt() * off_diagonal


def distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    off_diagonal = ~torch.eye(len(student), dtype=torch.bool, device=student.device)
    s, t = pairwise_distances(student)[off_diagonal], pairwise_distances(teacher)[off_diagonal]
    return F.smooth_l1_loss(s / s.mean().clamp_min(_EPS), t / t.mean().clamp_min(_EPS))


def angles(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, B, B) cosines: [j, i, k] = cos of the angle at x_j between x_i - x_j and x_k - x_j.

    From the Gram matrix G: <x_i - x_j, x_k - x_j> = G_ik - G_ij - G_jk + G_jj, so no (B, B, D) tensor of
    differences is formed; entries with i == j or k == j (no angle) are zero.
    """
    gram = embeddings @ embeddings.T
    diagonal = gram.diagonal()
    dots = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diagonal[:, None, None]
    distances = pairwise_distances(embeddings)
    eye = torch.eye(len(embeddings), dtype=embeddings.dtype, device=embeddings.device)
    safe = distances + eye  # the diagonal (zero length) is masked below; 1 keeps the division finite
    cosines = dots / (safe[:, :, None] * safe[:, None, :])
    present = (1 - eye)[:, :, None] * (1 - eye)[:, None, :]
    return cosines * present


def angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    batch = len(student)
    eye = torch.eye(batch, dtype=torch.bool, device=student.device)
    valid = ~(eye[:, :, None] | eye[:, None, :])  # i != j and k != j
    return F.smooth_l1_loss(angles(student)[valid], angles(teacher)[valid])


@implements("rkd")
class RKD(Distiller):
    learns_from_unlabeled = True

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        if teacher is None:
            raise EdgekdError("distill.rkd: this method needs a teacher")
        self.teacher_capture = FeatureCapture(teacher, [embedding_tap(teacher)])
        self.student_capture = FeatureCapture(student, [embedding_tap(student)])

    def distill_terms(self, images):
        with torch.no_grad():
            _, (teacher_embedding,) = self.teacher_capture.run(images)
        logits, (student_embedding,) = self.student_capture.run(images)
        # relations between the images of the whole batch, also under DDP
        teacher_embedding = whole_batch(teacher_embedding.flatten(1))
        student_embedding = whole_batch(student_embedding.flatten(1))
        options = self.options
        return logits, {
            "rkd_distance": options.distance_weight * distance_loss(student_embedding, teacher_embedding),
            "rkd_angle": options.angle_weight * angle_loss(student_embedding, teacher_embedding),
        }
