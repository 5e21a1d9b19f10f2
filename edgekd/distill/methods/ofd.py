"""Heo et al. (2019), "A Comprehensive Overhaul of Feature Distillation" (OFD).

Both networks are read before their ReLU. The student's map goes through a connector (1x1 conv + BN) to the
teacher's channels. The teacher's map is clipped from below at a per-channel margin m, the mean of its
negative responses: for a pre-activation that is its BatchNorm's output, x ~ N(beta, |gamma|) per channel, so
m = E[x | x < 0] = beta - |gamma| * pdf(beta/|gamma|) / cdf(-beta/|gamma|). The partial L2 distance then
skips the positions where the student is at or below the target and the target is not positive: a negative
teacher response only says "off", and any student value below it means the same after the ReLU.

loss = CE + weight * sum_i 2^-(n-1-i) * partial_L2_i / batch, deeper taps weighing more, as in the paper's
code; weight = 1/1000 is its CIFAR setting.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgekd.distill.features import FeatureDistiller, resize_to
from edgekd.distill.registry import implements

# Below this probability of a negative response the conditional mean is numerically meaningless; the paper's
# code then uses -3 standard deviations.
_MIN_NEGATIVE_MASS = 1e-3


def margin_from_moments(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[x | x < 0] for x ~ N(mean, std) per channel; -3 std where P(x < 0) < 1e-3 (as the paper's code)."""
    mean, std = mean.double(), std.double().abs().clamp_min(1e-12)
    ratio = mean / std
    pdf = torch.exp(-0.5 * ratio**2) / math.sqrt(2 * math.pi)
    negative_mass = torch.special.ndtr(-ratio)
    conditional = mean - std * pdf / negative_mass.clamp_min(1e-300)
    return torch.where(negative_mass < _MIN_NEGATIVE_MASS, -3 * std, conditional).float()


def bn_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """The margin of the pre-activation a BatchNorm outputs: its bias is the mean, |weight| the std."""
    if bn.weight is None or bn.bias is None:
        return margin_from_moments(torch.zeros(bn.num_features), torch.ones(bn.num_features))
    return margin_from_moments(bn.bias.detach().cpu(), bn.weight.detach().cpu())


def partial_l2(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of (s - t)^2 over the positions where s > t or t > 0: where the target is not positive and the
    student is already below it, both give the same (zero) response after the ReLU."""
    counted = (student > target) | (target > 0)
    return ((student - target) ** 2 * counted).sum()


def depth_weights(count: int, base: float) -> list[float]:
    """base^-(n-1-i) for taps i = 0..n-1, shallow to deep: the deepest tap weighs 1."""
    return [base ** -(count - 1 - index) for index in range(count)]


class MarginBank(nn.Module):
    """One margin per teacher channel for each tap pair, shaped (1, C, 1, 1) for broadcasting.

    A tap whose BatchNorm is known gets its margin at construction; any other (MobileNetV2's bottleneck sums,
    torchvision stages) gets it from the per-channel mean and std of the teacher's features on the first
    training batch. The margins are persistent buffers, so a resumed run keeps the ones it started with.
    """

    def __init__(self, teacher: nn.Module, pairs):
        super().__init__()
        self.count = len(pairs)
        for index, pair in enumerate(pairs):
            channels = pair.teacher_shape.channels
            margin = torch.full((channels,), float("nan"))
            if pair.teacher.bn_path is not None:
                bn = teacher.get_submodule(pair.teacher.bn_path)
                if isinstance(bn, nn.BatchNorm2d) and bn.num_features == channels:
                    margin = bn_margin(bn)
            self.register_buffer(f"margin{index}", margin.view(1, channels, 1, 1))

    def margins(self, teacher_features: list[torch.Tensor]) -> list[torch.Tensor]:
        result = []
        for index, features in enumerate(teacher_features):
            margin = getattr(self, f"margin{index}")
            if torch.isnan(margin).any():
                mean = features.mean(dim=(0, 2, 3))
                std = features.std(dim=(0, 2, 3)) if features[:, 0].numel() > 1 else torch.ones_like(mean)
                margin.copy_(margin_from_moments(mean, std).view_as(margin).to(margin))
            result.append(margin)
        return result


def overhaul_distances(
    connectors: nn.ModuleList,
    margins: list[torch.Tensor],
    student_features: list[torch.Tensor],
    teacher_features: list[torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per tap pair: the partial L2 distance per image, and the connected student map (teacher-sized)."""
    distances, connected = [], []
    batch = student_features[0].shape[0]
    for connect, margin, student, teacher in zip(
        connectors, margins, student_features, teacher_features, strict=True
    ):
        mapped = resize_to(connect(student), teacher.shape[-2:])
        target = torch.maximum(teacher, margin)
        distances.append(partial_l2(mapped, target) / batch)
        connected.append(mapped)
    return distances, connected


@implements("ofd")
class OFD(FeatureDistiller):
    method = "ofd"
    preact = True
    learns_from_unlabeled = True

    def __init__(self, student, teacher, options, context):
        super().__init__(student, teacher, options, context)
        self.connectors = self.make_connectors()
        self.margin_bank = MarginBank(teacher, self.pairs)

    def prepare_first_batch(self, images):
        """The margins of taps without a BatchNorm, from the first batch's teacher features."""
        self.margin_bank.margins(self.teacher_features(images)[1])

    def distill_terms(self, images):
        _, teacher_features = self.teacher_features(images)
        logits, student_features = self.student_features(images)
        margins = self.margin_bank.margins(teacher_features)
        distances, _ = overhaul_distances(self.connectors, margins, student_features, teacher_features)
        weights = depth_weights(len(distances), 2.0)
        feature_loss = sum(w * d for w, d in zip(weights, distances, strict=True))
        return logits, {"ofd": self.options.weight * feature_loss}
