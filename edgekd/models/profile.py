"""Model size and cost: parameter count and the FLOPs of one image's forward pass."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgekd.models._common import evaluating


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm running statistics are not counted)."""
    return sum(parameter.numel() for parameter in model.parameters())


def _example_tensor(model: nn.Module) -> torch.Tensor:
    """An empty tensor on the model's device and floating dtype (CPU float32 for a model without any)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor
    return torch.empty(0)


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass on one ``(channels, height, width)`` image, counted by FlopCounterMode.

    A multiply-add counts as 2 FLOPs; only matrix multiplications and convolutions are counted. The model runs
    in eval mode under no_grad on its own device (a meta-device model works and costs nothing); every
    submodule's train/eval mode is restored afterwards.
    """
    reference = _example_tensor(model)
    image = torch.zeros(1, *input_shape, device=reference.device, dtype=reference.dtype)
    with evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    return int(counter.get_total_flops())
