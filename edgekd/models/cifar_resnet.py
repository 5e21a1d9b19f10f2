"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, three stages of n basic blocks.

Stage widths are ``width``, ``2*width`` and ``4*width`` at strides 1, 2 and 4. ``resnet<depth>``
uses width 16 (stages 16/32/64); ``resnet<depth>x4`` follows the RepDistiller resnet8x4/resnet32x4: a
32-channel stem and stages 64/128/256 (7.43M parameters for resnet32x4 at 100 classes). Shortcuts that
change shape are a 1x1 convolution with BatchNorm. Adaptive pooling at the end lets the network run on 8x8
to 224x224 inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models._common import MAX_CHANNELS, init_weights_, positive_int
from edgekd.models.registry import register_model


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus a shortcut.

    The final ReLU is its own non-inplace module ``relu_out``, so a forward hook on it sees the pre-activation
    sum (``bn2`` output plus shortcut) as its input, and the block output as its output.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, width: int, stem_width: int):
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        stage_widths = (width, 2 * width, 4 * width)
        self.layer1 = self._make_stage(stem_width, stage_widths[0], blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(stage_widths[0], stage_widths[1], blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(stage_widths[1], stage_widths[2], blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(stage_widths[2], num_classes)

        last = blocks_per_stage - 1
        self.taps = ["layer1", "layer2", "layer3"]
        self.preact_taps: list[str | None] = [f"{tap}.{last}.relu_out" for tap in self.taps]
        # the Overhaul margin uses the statistics of the BN right before the stage's final ReLU
        self.preact_bn: list[str | None] = [f"{tap}.{last}.bn2" for tap in self.taps]
        init_weights_(self)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)


# He et al. (2016) train resnet1202 as their deepest CIFAR network; twice that is room, not a limit anyone meets.
MAX_DEPTH = 2402


def _check_depth(name: str, depth: int) -> None:
    if depth < 8 or (depth - 2) % 6 != 0 or depth > MAX_DEPTH:
        raise EdgekdError(
            f"model '{name}': CIFAR ResNet depth must be 6n+2 from 8 to {MAX_DEPTH} "
            "(8, 14, 20, 32, 44, 56, 110, ...)"
        )


@register_model("resnet<depth>", hint="CIFAR ResNet, depth 6n+2, e.g. resnet8, resnet20, resnet56, resnet110")
def resnet(
    num_classes: int, in_channels: int, depth: int, width: int = 16, stem_width: int | None = None
) -> CifarResNet:
    """``width`` is the first stage's channel count (default 16); ``stem_width`` defaults to ``width``."""
    _check_depth(f"resnet{depth}", depth)
    width = positive_int("model_args.width", width, MAX_CHANNELS)
    stem_width = (
        width if stem_width is None else positive_int("model_args.stem_width", stem_width, MAX_CHANNELS)
    )
    return CifarResNet(depth, num_classes, in_channels, width, stem_width)


@register_model("resnet<depth>x4", hint="CIFAR ResNet with 4x wider stages, e.g. resnet8x4, resnet32x4")
def resnet_x4(
    num_classes: int, in_channels: int, depth: int, width: int = 64, stem_width: int | None = None
) -> CifarResNet:
    """RepDistiller's layout: stages ``width``/2x/4x (default 64/128/256) after a stem of ``width // 2``."""
    _check_depth(f"resnet{depth}x4", depth)
    width = positive_int("model_args.width", width, MAX_CHANNELS)
    stem_width = (
        max(1, width // 2)
        if stem_width is None
        else positive_int("model_args.stem_width", stem_width, MAX_CHANNELS)
    )
    return CifarResNet(depth, num_classes, in_channels, width, stem_width)
