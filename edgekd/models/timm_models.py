"""``timm:<name>``: any timm classifier, built by its pretrained-free constructor (never downloads weights).

timm is optional (``pip install timm``, the ``timm`` extra) and imported only when a ``timm:`` model is built,
so edgekd imports and runs without it.

The timm network becomes ``model.body`` with its classification Linear (``get_classifier()``) replaced by
nn.Identity; that Linear, built by timm for the student's classes, becomes ``model.classifier``. timm applies
its head dropout *functionally* before the classifier (and before what ``forward_head(pre_logits=True)``
returns), so no module marks the embedding before it. edgekd therefore builds the network without head dropout
and applies a recipe's ``model_args.drop_rate`` itself, in ``model.head_dropout``: ``body(x)`` is the
deterministic pooled embedding, and ``embedding_path`` names ``head_dropout``, whose input it is.

Taps (paths start with ``body.``) are the modules timm's own ``feature_info`` lists (the ones
``features_only`` would return), keeping those whose output is a channels-first map with the channel count
timm declares, found by running a meta-device twin of the network once (free). Token-shaped (ViT) or
channels-last (Swin) outputs are no taps. timm has no module whose input is a stage's pre-activation, so
``preact_taps``/``preact_bn`` are None.
A state_dict saved from the plain timm network (keys like ``classifier.weight``, ``head.fc.weight``) loads too.

The student families sized by a budget are lists of timm's own size variants, each placed on a grid of the
multipliers timm builds it with (see ``TIMM_FAMILIES``).
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models._common import accept_bare_network_keys, probability
from edgekd.models.registry import register_model

# Options of timm.create_model that would load weights or change what edgekd builds around the network.
_REFUSED_ARGS = {
    "pretrained": "edgekd never downloads weights (give a checkpoint instead)",
    "pretrained_cfg": "edgekd never downloads weights (give a checkpoint instead)",
    "pretrained_cfg_overlay": "edgekd never downloads weights (give a checkpoint instead)",
    "checkpoint_path": "give the checkpoint as the recipe's `checkpoint` instead",
    "features_only": "edgekd builds the classifier and reads the features through taps",
    "num_classes": "the classes come from the data",
    "in_chans": "the channels come from `data.channels`",
}

# Student families: each member is a timm variant and its place on the family's size grid, the multipliers
# timm's constructor builds that variant with (read from timm's model definitions). Grid coordinates must
# grow with the work a member does per image: latency sizing infers from them (budget.dominates).
TIMM_GRID_AXES: dict[str, tuple[str, ...]] = {
    "timm_mobilenetv4": ("variant (0 conv_small, 1 conv_medium, 2 conv_large)", "channel multiplier"),
    "timm_mobilenetv3": ("variant (0 small, 1 large)", "channel multiplier", "depth multiplier"),
    "timm_efficientnet_lite": ("channel multiplier", "depth multiplier"),
}
TIMM_FAMILIES: dict[str, tuple[tuple[str, tuple[float, ...]], ...]] = {
    "timm_mobilenetv4": (
        ("mobilenetv4_conv_small_035", (0, 0.35)),
        ("mobilenetv4_conv_small_050", (0, 0.5)),
        ("mobilenetv4_conv_small", (0, 1.0)),
        ("mobilenetv4_conv_medium", (1, 1.0)),
        ("mobilenetv4_conv_large", (2, 1.0)),
    ),
    "timm_mobilenetv3": (
        ("mobilenetv3_small_050", (0, 0.5, 1.0)),
        ("mobilenetv3_small_075", (0, 0.75, 1.0)),
        ("mobilenetv3_small_100", (0, 1.0, 1.0)),
        ("mobilenetv3_large_075", (1, 0.75, 1.0)),
        ("mobilenetv3_large_100", (1, 1.0, 1.0)),
        ("mobilenetv3_large_150d", (1, 1.5, 1.2)),
    ),
    "timm_efficientnet_lite": (
        ("efficientnet_lite0", (1.0, 1.0)),
        ("efficientnet_lite1", (1.0, 1.1)),
        ("efficientnet_lite2", (1.1, 1.2)),
        ("efficientnet_lite3", (1.2, 1.4)),
        ("efficientnet_lite4", (1.4, 1.8)),
    ),
}
_GRID_OF_VARIANT = {
    f"timm:{variant}": grid for members in TIMM_FAMILIES.values() for variant, grid in members
}


def timm_family_members(family: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``(model name, model_args)`` pairs of a timm family, smallest first."""
    return [(f"timm:{variant}", {}) for variant, _ in TIMM_FAMILIES[family]]


def timm_member_size(name: str) -> tuple[float, ...] | None:
    """A timm family member's grid coordinates, or None when ``name`` is no member of a timm family."""
    return _GRID_OF_VARIANT.get(name)


class TimmClassifier(nn.Module):
    def __init__(
        self,
        arch: str,
        body: nn.Module,
        head_path: str,
        classifier: nn.Linear,
        drop_rate: float,
        taps: list[str],
    ):
        super().__init__()
        self.arch = arch
        self.head_path = head_path
        self.body = body
        self.head_dropout = nn.Dropout(drop_rate)
        self.classifier = classifier
        self.embedding_path = "head_dropout"  # its input is the pooled embedding, before any dropout
        self.taps = taps
        self.preact_taps: list[str | None] = [None] * len(taps)
        self.preact_bn: list[str | None] = [None] * len(taps)

        self.register_load_state_dict_pre_hook(accept_bare_network_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head_dropout(self.body(x)))


def _import_timm() -> ModuleType:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise EdgekdError("timm: models need the timm package; pip install timm") from None


def _check_name(timm: ModuleType, name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
    hint = f"did you mean {', '.join(close)}" if close else "see timm.list_models()"
    raise EdgekdError(f"model 'timm:{name}' is unknown to timm {timm.__version__}; {hint}")


def _check_args(name: str, kwargs: dict[str, Any]) -> None:
    for key, reason in _REFUSED_ARGS.items():
        if key in kwargs:
            raise EdgekdError(f"model_args.{key}: not allowed for 'timm:{name}'; {reason}")


def _build(timm: ModuleType, name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]):
    try:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
        )
    except TypeError as error:
        raise EdgekdError(f"model_args for 'timm:{name}' are not accepted: {error}") from None


def _detach_classifier(name: str, body: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
    """Take the network's classification Linear out (an nn.Identity takes its place): its path and it."""
    classifier = body.get_classifier()
    if not isinstance(classifier, nn.Linear) or classifier.out_features != num_classes:
        raise EdgekdError(
            f"model 'timm:{name}' has no single nn.Linear classifier, which edgekd needs; choose another model"
        )
    path = next(path for path, module in body.named_modules() if module is classifier)
    body.set_submodule(path, nn.Identity())
    return path, classifier


def _feature_taps(network: nn.Module, in_channels: int) -> list[str]:
    """The feature_info modules whose output is an N x C x H x W map with the declared C, shallow to deep."""
    declared = {info["module"]: info["num_chs"] for info in getattr(network, "feature_info", None) or []}
    shapes: dict[str, torch.Size] = {}

    def record(path: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                shapes[path] = output.shape

        return hook

    handles = [network.get_submodule(path).register_forward_hook(record(path)) for path in declared]
    # The size timm's configuration names: fixed-size networks (ViT) run only at that size.
    height, width = network.pretrained_cfg.get("input_size", (3, 224, 224))[-2:]
    image = torch.zeros(1, in_channels, height, width, device=next(network.parameters()).device)
    try:
        with torch.no_grad():
            network.eval()(image)
    except Exception:  # a network that cannot run on the meta device simply gets no taps
        return []
    finally:
        for handle in handles:
            handle.remove()
    return [
        path
        for path, channels in declared.items()
        if path in shapes and len(shapes[path]) == 4 and shapes[path][1] == channels
    ]


@register_model(
    "timm:<name>", hint="any timm classifier (pip install timm), e.g. timm:mobilenetv4_conv_small"
)
def timm_model(num_classes: int, in_channels: int, name: str, **kwargs: Any) -> TimmClassifier:
    """``kwargs`` go to ``timm.create_model`` (e.g. ``drop_path_rate``); ``drop_rate`` is applied by edgekd
    after the embedding; weights are never loaded."""
    timm = _import_timm()
    _check_name(timm, name)
    _check_args(name, kwargs)
    drop_rate = probability("model_args.drop_rate", kwargs.pop("drop_rate", 0.0))
    body = _build(timm, name, num_classes, in_channels, kwargs)
    head_path, classifier = _detach_classifier(name, body, num_classes)
    with torch.device("meta"):  # the twin is only run for its shapes: no memory, no initialization cost
        twin = _build(timm, name, num_classes, in_channels, kwargs)
    taps = [f"body.{tap}" for tap in _feature_taps(twin, in_channels)]
    return TimmClassifier(name, body, head_path, classifier, drop_rate, taps)
