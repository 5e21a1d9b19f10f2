"""REFILLED (Ye et al., paper 003): distilling from a teacher of other classes, in two stages.

Both stages work in the embedding φ: a network's penultimate features, L2-normalised. Neither needs the
teacher's classes, so REFILLED works across disjoint label sets (cross-task), and on the same or a subset.

Stage 1, *embedding*: semi-hard triplets are mined within each batch on the **student's** embedding
(anchor a, positive p of a's class, negative n of another class, with 0 < d(a,n) − d(a,p) ≤ margin). For
each triplet a network gives p = σ((d(a,n) − d(a,p)) / τ) (eq. 4 of the paper, written as a sigmoid), with
τ = `triplet_temperature` for the teacher and none (`student_temperature` 1) for the student, as §4.2 says;
the loss is KL(Bern(p_teacher) ‖ Bern(p_student)) averaged over the batch's triplets (eq. 5), times
`triplet_weight`. Only the student's embedding trains (its classifier gets no gradient); a batch without a
triplet contributes an exact zero (the authors' code divides by the triplet count and yields NaN there).
The stage keeps the epoch of best validation 1-NN accuracy of the student's embedding (training images as
the gallery), a score that needs no classifier.

Stage 2, *classifier*: the student, from stage 1 with a fresh classifier, learns
CE + λ·KL(p_teacher ‖ softmax(s[:, present] / τ)), where `present` are the classes of the batch and
p_teacher is the teacher's local posterior over them, softmax(−‖φ_T(x) − c_k‖² / τ) (eqs. 7–9), with class
centres c_k of the teacher's embedding over the batch (`centres: batch`, the paper's eq. 7, the default) or
over the student's whole training set (`centres: global`, the authors' newer code). λ decays exponentially
per epoch by default (the paper's REFILLED) or stays constant (`kd_decay: 1`, its REFILLED⁻).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.distill.base import Distiller
from edgekd.distill.embedding import (
    EmbeddingStage,
    embed,
    embed_all,
    embedding_tap,
    embedding_then_classifier,
)
from edgekd.distill.features import FeatureCapture
from edgekd.distill.methods.rkd import pairwise_distances
from edgekd.distill.options import RefilledOptions
from edgekd.distill.plan import Stage
from edgekd.distill.registry import implements
from edgekd.errors import EdgekdError
from edgekd.train.dist import whole_batch


# ------------------------------------------------------------------------------------------ triplets
def semi_hard_triplets(distances: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """(T, 3) indices (anchor, positive, negative) with 0 < d(a,n) - d(a,p) <= margin, in lexicographic
    order. O(B³) boolean masks: fine for batches up to a few hundred."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye  # [a, p]
    negative = ~same  # [a, n]
    gap = distances[:, None, :] - distances[:, :, None]  # [a, p, n] = d(a,n) - d(a,p)
    valid = positive[:, :, None] & negative[:, None, :] & (gap > 0) & (gap <= margin)
    return valid.nonzero()


def triplet_logits(distances: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """d(a,n) - d(a,p) per triplet: p = σ(this / τ) is eq. 4's probability that a is nearer p than n."""
    anchor, positive, negative = triplets.unbind(1)
    return distances[anchor, negative] - distances[anchor, positive]


def bernoulli_kl(teacher_logit: torch.Tensor, student_logit: torch.Tensor) -> torch.Tensor:
    """KL(Bern(σ(t)) ‖ Bern(σ(s))) per element, from logits (log σ is computed stably)."""
    p = torch.sigmoid(teacher_logit)
    log_p, log_not_p = F.logsigmoid(teacher_logit), F.logsigmoid(-teacher_logit)
    log_q, log_not_q = F.logsigmoid(student_logit), F.logsigmoid(-student_logit)
    return p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)


# ------------------------------------------------------------------------------------------ local posterior
def class_centres(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, d) mean embedding of each class (eq. 7); a class without an image gets a zero row."""
    one_hot = F.one_hot(labels, num_classes).to(embeddings.dtype)
    counts = one_hot.sum(0).clamp_min(1)
    return (one_hot.T @ embeddings) / counts[:, None]


def local_posterior(
    embeddings: torch.Tensor, centres: torch.Tensor, present: torch.Tensor, temperature: float
) -> torch.Tensor:
    """softmax over the present classes of −‖φ(x) − c_k‖² / τ (eq. 8): a nearest-centre classifier."""
    squared = torch.cdist(embeddings, centres[present]).square()
    return F.softmax(-squared / temperature, dim=1)


def local_kd(
    student_logits: torch.Tensor, teacher_posterior: torch.Tensor, present: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(p_teacher ‖ softmax(s[:, present] / τ)), averaged over the batch (eq. 9's second term)."""
    log_student = F.log_softmax(student_logits[:, present] / temperature, dim=1)
    return F.kl_div(log_student, teacher_posterior, reduction="batchmean")


# ------------------------------------------------------------------------------------------ stages
class _RefilledStage(Distiller):
    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        if teacher is None:
            raise EdgekdError("distill.refilled: this method needs a teacher")
        self.teacher_capture = FeatureCapture(teacher, [embedding_tap(teacher)])
        self.student_capture = FeatureCapture(student, [embedding_tap(student)])

    @torch.no_grad()
    def teacher_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return embed(self.teacher_capture, images)


class RefilledEmbedding(EmbeddingStage, _RefilledStage):
    """Stage 1: align the teacher's and the student's triplet probabilities on the student's hard triplets."""

    def forward_train(self, images, labels):
        # the logits (of a head this stage does not train) only feed the trainer's logs
        logits, (features,) = self.student_capture.run(images)
        # triplets among the whole batch's images, also under DDP (where every process gathers the
        # teacher's embeddings, triplet or not: no collective may hang on a decision the processes might
        # not share)
        embedding = whole_batch(F.normalize(features.flatten(1), dim=1))
        teacher = whole_batch(self.teacher_embedding(images))
        return logits, {"triplet": self.triplet_loss(embedding, teacher, whole_batch(labels))}

    def triplet_loss(
        self, student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, labels
    ) -> torch.Tensor:
        options = self.options
        student_distances = pairwise_distances(student_embedding)
        triplets = semi_hard_triplets(student_distances.detach(), labels, options.margin)
        if not len(triplets):
            # no triplet: an exact zero that still belongs to the graph, so backward runs and moves nothing
            return student_embedding.sum() * 0.0
        teacher_distances = pairwise_distances(teacher_embedding)
        # the paper softens the teacher's probabilities only (§4.2): student_temperature is 1 by default
        kl = bernoulli_kl(
            triplet_logits(teacher_distances, triplets) / options.triplet_temperature,
            triplet_logits(student_distances, triplets) / options.student_temperature,
        )
        return options.triplet_weight * kl.mean()


@implements("refilled")
class RefilledClassifier(_RefilledStage):
    """Stage 2: CE + λ·local KD from the teacher's nearest-centre posterior over the batch's classes."""

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        self.centres: torch.Tensor | None = None
        self.kd_weight = options.kd_weight

    def prepare_stage(self, data, device) -> None:
        if self.options.centres == "global":
            embeddings, labels = embed_all(self.teacher, data.eval_loader("train"), device)
            self.centres = class_centres(
                torch.from_numpy(embeddings).float().to(device),
                torch.from_numpy(labels).to(device),
                data.num_classes,
            )

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.kd_weight = self.options.kd_weight * self.options.kd_decay**epoch

    def forward_train(self, images, labels):
        options = self.options
        logits = self.student(images)
        terms = {"ce": F.cross_entropy(logits, labels)}
        if self.kd_weight > 0:
            teacher_embedding = self.teacher_embedding(images)
            # the classes (and centres) of the whole batch, also under DDP
            batch_labels = whole_batch(labels)
            centres = self.centres
            if centres is None:  # centres: batch
                centres = class_centres(whole_batch(teacher_embedding), batch_labels, logits.shape[1])
            present = torch.unique(batch_labels)
            posterior = local_posterior(teacher_embedding, centres, present, options.posterior_temperature)
            kd = local_kd(logits, posterior, present, options.posterior_temperature)
            terms["local_kd"] = self.kd_weight * kd
        return logits, terms


def refilled_plan(options: RefilledOptions, train) -> list[Stage]:
    return embedding_then_classifier(
        "distill.refilled.embedding_epochs",
        options.embedding_epochs,
        train,
        (RefilledEmbedding, "triplet KL on the student's semi-hard triplets, embedding only"),
        (RefilledClassifier, "fresh head; CE + λ·local KD from the teacher's class centres"),
    )
