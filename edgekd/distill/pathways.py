"""DistPro's pathways (paper 002): a student tap, a transform, a teacher tap, and the loss between them.

A pathway carries the student's feature map at tap j through a small transform to the shape of the teacher's
map at tap i and scores the pair with the hierarchical context loss (HCL, from ReviewKD). The distillation
process is a weight per pathway at every step of training: α_t = softmax(concat(α̃_t, g))[:N], the *biased*
softmax (g = 1: a constant extra logit lets all weights shrink together), or a plain softmax.

A recorded process is replayed over a run of another length by linear interpolation in training progress.

Transform *variants*: the paper puts N "candidate predefined transforms" M_{i,j,1..N} on every (teacher
tap i, student tap j) connection (3 on CIFAR) but specifies one architecture only, Fig. 4a's block (and
another, unspecified one for DeiT). edgekd's N variants are N copies of that block, each initialised from
its own draw: a search over which initialisation of the specified block serves a connection best, not over
kinds of transform. Inventing two other architectures would put in the paper's place transforms it never
describes; the repeated specified block keeps its search space's size (27 pathways on CIFAR) and shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# HCL: levels pooled to these sizes after the full-size term, with weights 1, 1/2, 1/4, 1/8 (full first).
HCL_POOLED_SIZES = (4, 2, 1)
HCL_WEIGHTS = (1.0, 0.5, 0.25, 0.125)


def hcl_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE at full size plus MSE after adaptive average pooling to 4×4, 2×2 and 1×1, a level skipped when it
    is not smaller than the map; weights 1, ½, ¼, ⅛ normalised by the sum of those used."""
    height = teacher.shape[-2]
    total = HCL_WEIGHTS[0] * F.mse_loss(student, teacher)
    used = HCL_WEIGHTS[0]
    for size, weight in zip(HCL_POOLED_SIZES, HCL_WEIGHTS[1:], strict=True):
        if size >= height:
            continue
        pooled_student = F.adaptive_avg_pool2d(student, size)
        pooled_teacher = F.adaptive_avg_pool2d(teacher, size)
        total = total + weight * F.mse_loss(pooled_student, pooled_teacher)
        used += weight
    return total / used


def process_weights(logits: torch.Tensor, bias: float | None) -> torch.Tensor:
    """α = softmax(concat(α̃, g))[:N] with g = ``bias`` (the biased softmax), or softmax(α̃) when None."""
    if bias is None:
        return F.softmax(logits, dim=-1)
    extended = torch.cat([logits, logits.new_full((*logits.shape[:-1], 1), bias)], dim=-1)
    return F.softmax(extended, dim=-1)[..., :-1]


class SpatialAttention(nn.Module):
    """x · σ(conv1×1(x)): one attention map over the spatial positions, shared by every channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.score = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.score(x))


def conv_bn(in_channels: int, out_channels: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class PathwayTransform(nn.Module):
    """The paper's transform (Fig. 4): conv3×3+BN+ReLU → spatial self-attention → conv3×3+BN+ReLU → resize to
    the teacher's size → conv3×3+BN to the teacher's channels; mid channels min(512, C_t, C_s)."""

    def __init__(self, student_channels: int, teacher_channels: int, teacher_size: tuple[int, int]):
        super().__init__()
        mid = min(512, teacher_channels, student_channels)
        self.teacher_size = tuple(teacher_size)
        self.enter = conv_bn(student_channels, mid, relu=True)
        self.attention = SpatialAttention(mid)
        self.refine = conv_bn(mid, mid, relu=True)
        self.exit = conv_bn(mid, teacher_channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.refine(self.attention(self.enter(x)))
        if tuple(x.shape[-2:]) != self.teacher_size:
            x = F.interpolate(x, size=self.teacher_size, mode="bilinear", align_corners=False)
        return self.exit(x)


@dataclass(frozen=True)
class Pathway:
    """The teacher's tap ← the student's tap through transform variant k, named '<teacher tap><-<student
    tap>#<k>', e.g. 'layer1<-layer2#0'."""

    teacher_tap: str
    student_tap: str
    variant: int

    @property
    def name(self) -> str:
        return f"{self.teacher_tap}<-{self.student_tap}#{self.variant}"


def allowed_pairs(teacher_count: int, student_count: int, rule: str) -> list[tuple[int, int]]:
    """(teacher index, student index) pairs: 'all' (the paper's eq. 2: every pair, 3 × 3 = 9 connections on
    CIFAR) or 'deeper_or_same' (j ≥ i: ReviewKD's restriction, as in the authors' release)."""
    pairs = [(i, j) for i in range(teacher_count) for j in range(student_count)]
    if rule == "deeper_or_same":
        return [(i, j) for i, j in pairs if j >= i]
    if rule == "all":
        return pairs
    raise ValueError(f"pairs: '{rule}' is not one of deeper_or_same, all")


def interpolate_process(steps: Sequence[int], values: torch.Tensor, total_steps: int, searched_steps: int):
    """The recorded process (α at the given search steps, values (S, N)) replayed over ``total_steps``: step t
    of the replay reads the process at search progress t·searched_steps/total_steps, linearly interpolated
    between the recorded points (held constant before the first and after the last). Returns a function of t."""
    recorded = torch.as_tensor(list(steps), dtype=torch.float64)
    table = torch.as_tensor(values, dtype=torch.float64)

    def at(step: int) -> torch.Tensor:
        position = step * searched_steps / max(total_steps, 1)
        right = int(torch.searchsorted(recorded, torch.tensor(position, dtype=torch.float64), right=False))
        if right == 0:
            return table[0].float()
        if right >= len(recorded):
            return table[-1].float()
        left = right - 1
        span = float(recorded[right] - recorded[left])
        share = (position - float(recorded[left])) / span if span > 0 else 1.0
        return (table[left] + share * (table[right] - table[left])).float()

    return at
