"""Small helpers shared by the zoo families: argument checks and weight initialization."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from edgekd.errors import EdgekdError
from edgekd.schema_base import shown_value

# Far beyond any real network, yet small enough that building one on the meta device stays instant: a
# channel count or depth past these is a typo or an accident (`width: 1e7`), not a model.
MAX_CHANNELS = 8192
MAX_WIDTH_MULT = 32.0


def positive_int(field: str, value: object, most: int | None = None) -> int:
    """``value`` as an int in [1, most], or an EdgekdError naming ``field``.

    Bools are rejected although they are ints: YAML reads ``yes`` as True.
    """
    whole = not isinstance(value, bool) and isinstance(value, int)
    if not whole or value < 1 or (most is not None and value > most):
        allowed = "a whole number >= 1" if most is None else f"a whole number from 1 to {most:,}"
        raise EdgekdError(f"{field}: {shown_value(value)} is not allowed; give {allowed}")
    return value


def positive_float(field: str, value: object, most: float | None = None) -> float:
    """``value`` as a finite float in (0, most] (ints are accepted), or an EdgekdError naming ``field``."""
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or not math.isfinite(value) or not 0 < value <= (most if most is not None else math.inf):
        allowed = "a number > 0" if most is None else f"a number > 0 and <= {most:g}"
        raise EdgekdError(f"{field}: {shown_value(value)} is not allowed; give {allowed}")
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


def accept_bare_network_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """A load_state_dict pre-hook of the torchvision and timm wrappers: rename, in place, the keys of a
    state_dict saved from the bare network (a teacher trained with plain torchvision or timm code) to the
    wrapper's layout, its head's keys (``module.head_path``) to ``classifier.``, the rest under ``body.``."""
    keys = [key for key in state_dict if key.startswith(prefix)]
    if not keys or any(key.startswith(prefix + "body.") for key in keys):
        return
    head = prefix + module.head_path + "."
    for key in keys:
        if key.startswith(head):
            new_key = prefix + "classifier." + key[len(head) :]
        else:
            new_key = prefix + "body." + key[len(prefix) :]
        state_dict[new_key] = state_dict.pop(key)


def in_wrapper_layout(module: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the keys ``module.load_state_dict`` would see after its renaming pre-hook (a copy),
    so that a checkpoint's keys and shapes can be checked before loading."""
    renamed = dict(state_dict)
    if hasattr(module, "head_path"):
        accept_bare_network_keys(module, renamed, "")
    return renamed
