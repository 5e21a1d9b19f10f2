"""RKD, then fine-tuning: the REFILLED paper's relational baseline across label sets, as a two-stage plan.

Stage 1, *embedding*: the student's embedding learns the teacher's relational structure alone (RKD's
distance and angle terms on the penultimate features, no label term), selected by validation 1-NN accuracy
like REFILLED's embedding stage. Stage 2, *classifier*: a fresh classifier and the whole student fine-tuned
with cross-entropy. Unlike `rkd` (CE + RKD in one stage), the teacher shapes only the embedding, which is
what a cross-task teacher can offer.
"""

from __future__ import annotations

import torch.nn.functional as F

from edgekd.distill.base import Distiller
from edgekd.distill.embedding import EmbeddingStage, embedding_then_classifier
from edgekd.distill.methods.rkd import RKD
from edgekd.distill.options import RKDFinetuneOptions
from edgekd.distill.plan import Stage
from edgekd.distill.registry import implements


@implements("rkd_ft")
class RKDEmbedding(EmbeddingStage, RKD):
    """RKD's terms alone, on the embedding."""

    def forward_train(self, images, labels):
        return self.distill_terms(images)


class CrossEntropyStage(Distiller):
    """Plain cross-entropy on the labels: a fine-tuning stage."""

    uses_teacher = False

    def forward_train(self, images, labels):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}


def rkd_finetune_plan(options: RKDFinetuneOptions, train) -> list[Stage]:
    return embedding_then_classifier(
        "distill.rkd_ft.embedding_epochs",
        options.embedding_epochs,
        train,
        (RKDEmbedding, "RKD distance + angle on the embedding, no label term"),
        (CrossEntropyStage, "fresh head, the whole student fine-tuned with CE"),
    )
