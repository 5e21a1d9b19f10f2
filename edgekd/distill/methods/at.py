"""Attention transfer (Zagoruyko & Komodakis 2017): match where the networks' feature maps are active.

At each tap pair, the spatial attention map is the channel mean of |f|^p (p = 2), flattened and L2-normalized
per image; the loss is the mean squared difference of the two maps. Channel counts need not match, so there
is no connector. loss = CE + (beta/2) * sum over pairs, beta = 1000 (the paper's eq. 2 and CIFAR setting).
A student map of another size is resized (average-pooled down, interpolated up) before normalizing.
By default only taps with maps of at least 4x4 are used (see ``AT.default_teacher_taps``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.distill.features import FeatureDistiller, probe_shapes, resize_to, resolve_taps
from edgekd.distill.registry import implements


def attention_map(features: torch.Tensor, p: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, H*W) L2-normalized mean over channels of |f|^p, at ``size`` when given."""
    energy = features.abs().pow(p).mean(dim=1, keepdim=True)
    if size is not None:
        # resize the energy rather than the features: pooling f before squaring would lose the energy of
        # responses of opposite sign that cancel out
        energy = resize_to(energy, size)
    return F.normalize(energy.flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float) -> torch.Tensor:
    size = tuple(teacher.shape[-2:])
    return (attention_map(student, p, size) - attention_map(teacher, p)).pow(2).mean()


@implements("at")
class AT(FeatureDistiller):
    method = "at"
    preact = False
    learns_from_unlabeled = True

    def default_teacher_taps(self, teacher):
        """The declared taps with maps of at least min_map_size: the paper's CIFAR maps are 32, 16 and 8 wide.

        A 2x2 map has hardly any layout to transfer, and matching its normalized (scale-free) attention drove
        the student's last features, hence its logits, to diverge on 8x8 digits (CE 2.4 -> 35 at lr 0.1,
        while the 8x8 and 4x4 taps alone train well); a 1x1 map normalizes to a constant.
        """
        where = f"{self.where}.teacher_taps"
        taps = resolve_taps(teacher, None, preact=False, role="teacher", where=where)
        shapes = probe_shapes(teacher, taps, self.input_shape, role="teacher", where=where)
        size = self.options.min_map_size
        large = [index for index, shape in enumerate(shapes) if min(shape.size) >= size]
        return large or [0]

    def distill_terms(self, images):
        _, teacher_features = self.teacher_features(images)
        logits, student_features = self.student_features(images)
        p = self.options.p
        distance = sum(
            attention_loss(s, t, p) for s, t in zip(student_features, teacher_features, strict=True)
        )
        return logits, {"at": self.options.beta / 2 * distance}
