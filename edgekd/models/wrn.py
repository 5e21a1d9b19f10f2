"""Wide ResNets (Zagoruyko & Komodakis 2016): ``wrn_<depth>_<widen>``, depth 6n+4, pre-activation blocks.

A 16-channel stem, then three stages of n blocks with widths 16k, 32k and 64k (k = widen) at strides 1, 2, 4,
then BN-ReLU, adaptive average pooling and the classifier. A shortcut that changes shape is a bare 1x1
convolution applied to the block's BN-ReLU output, as in the reference implementation.

Pre-activation taps: a stage's output is a sum that no ReLU touches directly; its activation happens in the
*next* stage's first block (``bn1`` then ``relu1``), or in the final ``bn``/``relu`` for the last stage. So
``preact_taps[i]`` is that ReLU, whose input is BN(stage output): the same shape as the stage output, and the
pre-ReLU feature the Overhaul distillation compares (Heo et al. 2019 use the same points for WRN).
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models._common import MAX_CHANNELS, init_weights_, probability
from edgekd.models.registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        # an identity shortcut carries the raw input; a projection sees the activated one
        residual = x if self.shortcut is None else self.shortcut(activated)
        return out + residual


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._make_stage(16, widths[0], blocks_per_stage, 1, dropout)
        self.layer2 = self._make_stage(widths[0], widths[1], blocks_per_stage, 2, dropout)
        self.layer3 = self._make_stage(widths[1], widths[2], blocks_per_stage, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[2], num_classes)

        self.taps = ["layer1", "layer2", "layer3"]
        self.preact_taps: list[str | None] = ["layer2.0.relu1", "layer3.0.relu1", "relu"]
        self.preact_bn: list[str | None] = ["layer2.0.bn1", "layer3.0.bn1", "bn"]
        init_weights_(self)

    @staticmethod
    def _make_stage(
        in_channels: int, out_channels: int, blocks: int, stride: int, dropout: float
    ) -> nn.Sequential:
        layers = [PreActBlock(in_channels, out_channels, stride, dropout)]
        layers += [PreActBlock(out_channels, out_channels, 1, dropout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)


# Zagoruyko & Komodakis go to depth 40 and widen 10; these bounds only stop accidents (`wrn_16_10000000`).
MAX_DEPTH = 1000
MAX_WIDEN = MAX_CHANNELS // 64


@register_model("wrn_<depth>_<widen>", hint="Wide ResNet, depth 6n+4, e.g. wrn_16_2, wrn_40_2, wrn_28_4")
def wrn(num_classes: int, in_channels: int, depth: int, widen: int, dropout: float = 0.0) -> WideResNet:
    """``dropout`` is the rate between a block's two convolutions (0 = none)."""
    if depth < 10 or (depth - 4) % 6 != 0 or depth > MAX_DEPTH:
        raise EdgekdError(
            f"model 'wrn_{depth}_{widen}': Wide ResNet depth must be 6n+4 from 10 to {MAX_DEPTH} "
            "(10, 16, 22, 28, 40, ...)"
        )
    if not 1 <= widen <= MAX_WIDEN:
        raise EdgekdError(
            f"model 'wrn_{depth}_{widen}': the widen factor must be a whole number from 1 to {MAX_WIDEN}"
        )
    dropout = probability("model_args.dropout", dropout)
    return WideResNet(depth, widen, num_classes, in_channels, dropout)
