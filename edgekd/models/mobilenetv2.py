"""A CIFAR-style MobileNetV2 (Sandler et al. 2018): inverted residual blocks with linear bottlenecks.

Unlike the ImageNet network the stem and the first 24-channel stage keep stride 1, so the total stride is 8
and 8x8 inputs still reach the classifier as 1x1 maps. The blocks are grouped in four stages, which are
the taps, at strides 1, 2, 4 and 8:

    layer1: 16 (t=1, n=1), 24 (t=6, n=2)      stride 1
    layer2: 32 (t=6, n=3)                       stride 2
    layer3: 64 (t=6, n=4), 96 (t=6, n=3)        stride 4
    layer4: 160 (t=6, n=3), 320 (t=6, n=1)      stride 8

then a 1x1 convolution to 1280 channels (more when width_mult > 1, as in the paper) and the classifier.
Channel counts are scaled by ``width_mult`` and rounded to multiples of 8.

Each stage ends in a linear bottleneck (no activation), so the tap outputs are already pre-activation
features; no nn.ReLU consumes them, hence ``preact_taps`` and ``preact_bn`` are all None.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.models._common import MAX_WIDTH_MULT, init_weights_, positive_float
from edgekd.models.registry import register_model

# (expansion t, output channels c, blocks n, stride of the first block s), grouped per stage
_STAGES: tuple[tuple[tuple[int, int, int, int], ...], ...] = (
    ((1, 16, 1, 1), (6, 24, 2, 1)),
    ((6, 32, 3, 2),),
    ((6, 64, 4, 2), (6, 96, 3, 1)),
    ((6, 160, 3, 2), (6, 320, 1, 1)),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` (at least ``divisor``) without losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    ]


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; a residual when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += _conv_bn_relu6(in_channels, hidden, 1, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float):
        super().__init__()
        channels = make_divisible(_STEM_CHANNELS * width_mult)
        self.stem = nn.Sequential(*_conv_bn_relu6(in_channels, channels, 3, 1))
        stages = []
        for stage in _STAGES:
            blocks: list[nn.Module] = []
            for expansion, base_channels, repeats, stride in stage:
                out_channels = make_divisible(base_channels * width_mult)
                for index in range(repeats):
                    blocks.append(
                        InvertedResidual(channels, out_channels, stride if index == 0 else 1, expansion)
                    )
                    channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        head_channels = make_divisible(_HEAD_CHANNELS * max(1.0, width_mult))
        self.head = nn.Sequential(*_conv_bn_relu6(channels, head_channels, 1, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head_channels, num_classes)

        self.taps = ["layer1", "layer2", "layer3", "layer4"]
        self.preact_taps: list[str | None] = [None] * len(self.taps)
        self.preact_bn: list[str | None] = [None] * len(self.taps)
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.pool(self.head(x)), 1)
        return self.classifier(x)


@register_model("mobilenetv2", hint="CIFAR-style MobileNetV2, option width_mult (default 1.0)")
def mobilenetv2(num_classes: int, in_channels: int, width_mult: float = 1.0) -> MobileNetV2:
    """``width_mult`` scales every channel count (the 1280-channel head only grows, never shrinks)."""
    width_mult = positive_float("model_args.width_mult", width_mult, MAX_WIDTH_MULT)
    return MobileNetV2(num_classes, in_channels, width_mult)
