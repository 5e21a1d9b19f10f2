"""Small helpers shared by the zoo families: argument checks and weight initialization."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from edgekd.errors import EdgekdError


def positive_int(field: str, value: object) -> int:
    """``value`` as an int >= 1, or an EdgekdError naming ``field``.

    Bools are rejected although they are ints: YAML reads ``yes`` as True.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EdgekdError(f"{field}: {value!r} is not allowed; give a whole number >= 1")
    return value


def positive_float(field: str, value: object) -> float:
    """``value`` as a float > 0 (ints are accepted), or an EdgekdError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise EdgekdError(f"{field}: {value!r} is not allowed; give a number > 0")
    return float(value)


def probability(field: str, value: object) -> float:
    """``value`` as a float in [0, 1), or an EdgekdError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise EdgekdError(f"{field}: {value!r} is not allowed; give a number in [0, 1)")
    return float(value)


def init_weights_(model: nn.Module) -> None:
    """Kaiming-normal convolutions and identity BatchNorms, so a model depends only on torch.manual_seed.

    Linear layers keep PyTorch's default initialization, which draws from the same seeded generator.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every submodule's own train/eval mode."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
