"""The model zoo's registry: name patterns mapped to constructors.

A registered name may hold placeholders: ``<name>`` matches a word (letters, digits, ``_``) and is passed to
the constructor as a str; any other ``<field>`` matches digits and is passed as an int. ``wrn_40_2`` therefore
calls the ``wrn_<depth>_<widen>`` constructor with ``depth=40, widen=2``.

Every zoo model follows these conventions, which the distillation code relies on:

* ``model.classifier`` is the final ``nn.Linear``; its input is the pooled embedding (penultimate features).
  A model that applies dropout to that input names the module whose input is the embedding before the
  dropout in ``model.embedding_path`` (torchvision and timm models do; no other zoo model needs to).
* ``model.taps`` lists module paths (as in ``named_modules()``) whose outputs are the stage feature maps,
  shallow to deep, with non-increasing spatial size.
* ``model.preact_taps[i]`` is the path of an ``nn.ReLU`` whose *input* is the pre-activation of tap ``i``
  (read ``inputs[0]`` in a forward hook), or None when the model has no such module.
* ``model.preact_bn[i]`` is the path of the BatchNorm whose output feeds that ReLU, or None.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models._common import positive_int
from edgekd.schema_base import shown_value

Constructor = TypeVar("Constructor", bound=Callable[..., nn.Module])

_PLACEHOLDER = re.compile(r"<(\w+)>")
_WORD_FIELDS = {"name"}  # placeholders that hold text; every other placeholder holds a number


@dataclass(frozen=True)
class _Entry:
    pattern: str
    regex: re.Pattern[str]
    constructor: Callable[..., nn.Module]
    hint: str


_REGISTRY: dict[str, _Entry] = {}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[position : match.start()]))
        field = match.group(1)
        # Nine digits at most: a longer number is no model, and int() of thousands of digits raises.
        value_regex = r"[A-Za-z0-9_]{1,100}" if field in _WORD_FIELDS else r"\d{1,9}"
        parts.append(f"(?P<{field}>{value_regex})")
        position = match.end()
    parts.append(re.escape(pattern[position:]))
    return re.compile("".join(parts))


def register_model(name: str, hint: str = "") -> Callable[[Constructor], Constructor]:
    """Register ``constructor(num_classes, in_channels, **fields, **kwargs)`` under a name or name pattern.

    ``hint`` is shown next to the pattern when a user asks for a name that does not exist.
    """

    def decorate(constructor: Constructor) -> Constructor:
        if name in _REGISTRY:
            raise ValueError(f"model name '{name}' is registered twice")
        _REGISTRY[name] = _Entry(name, _pattern_regex(name), constructor, hint)
        return constructor

    return decorate


def available_models() -> list[str]:
    """Registered names and name patterns, e.g. ``['mobilenetv2', 'resnet<depth>', ...]``."""
    return sorted(_REGISTRY)


def _describe_available() -> str:
    described = []
    for pattern in available_models():
        hint = _REGISTRY[pattern].hint
        described.append(f"{pattern} ({hint})" if hint else pattern)
    return "; ".join(described)


def _find_entry(name: str) -> tuple[_Entry, dict[str, int | str]]:
    for entry in _REGISTRY.values():
        match = entry.regex.fullmatch(name)
        if match:
            fields = {
                field: value if field in _WORD_FIELDS else int(value)
                for field, value in match.groupdict().items()
            }
            return entry, fields
    raise EdgekdError(f"model {shown_value(name)} is unknown; available: {_describe_available()}")


def _check_options(name: str, entry: _Entry, fields: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """Reject model_args the constructor does not take, before a TypeError with a traceback does."""
    for key in kwargs:
        if key in fields:
            raise EdgekdError(f"model_args.{key}: '{name}' already sets {key} through its name")
    parameters = inspect.signature(entry.constructor).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if takes_any:
        return
    options = [p for p in parameters if p not in fields and p not in ("num_classes", "in_channels")]
    for key in kwargs:
        if key not in options:
            allowed = ", ".join(options) if options else "none"
            raise EdgekdError(f"model_args.{key}: not an option of '{name}' (options: {allowed})")


def _check_conventions(name: str, model: nn.Module, num_classes: int) -> None:
    """A constructor that breaks the zoo conventions is a bug in edgekd, not a user error."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear) or classifier.out_features != num_classes:
        raise RuntimeError(f"zoo model '{name}' has no model.classifier nn.Linear with {num_classes} outputs")
    taps = getattr(model, "taps", None)
    preact_taps = getattr(model, "preact_taps", None)
    preact_bn = getattr(model, "preact_bn", None)
    if not isinstance(taps, list) or preact_taps is None or preact_bn is None:
        raise RuntimeError(f"zoo model '{name}' does not declare taps, preact_taps and preact_bn")
    if not len(taps) == len(preact_taps) == len(preact_bn):
        raise RuntimeError(
            f"zoo model '{name}' declares taps, preact_taps and preact_bn of different lengths"
        )


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build the zoo model ``name`` with a ``num_classes``-way classifier for ``in_channels``-channel images.

    ``kwargs`` are the constructor's options (a recipe's ``model_args``), e.g. ``width`` for CIFAR ResNets.
    The model is built on the current default device, so ``with torch.device("meta"):`` builds it for free.
    """
    positive_int("num_classes", num_classes)
    positive_int("in_channels", in_channels)
    entry, fields = _find_entry(name)
    _check_options(name, entry, fields, kwargs)
    model = entry.constructor(num_classes=num_classes, in_channels=in_channels, **fields, **kwargs)
    _check_conventions(name, model, num_classes)
    model.zoo_name = name  # lets error messages and reports name the model
    return model


def get_taps(model: nn.Module) -> list[str]:
    """The module paths of ``model``'s stage outputs, shallow to deep; EdgekdError when it declares none."""
    taps = getattr(model, "taps", None)
    if not taps:
        name = getattr(model, "zoo_name", type(model).__name__)
        raise EdgekdError(
            f"model '{name}' declares no feature taps; feature distillation needs a zoo model that does "
            "(resnet, wrn, mobilenetv2, or a convolutional torchvision or timm model)"
        )
    return list(taps)
