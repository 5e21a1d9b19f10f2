"""The model zoo: CIFAR ResNets, Wide ResNets, a CIFAR-style MobileNetV2, torchvision and timm classifiers.

Importing this package registers every family; see :mod:`edgekd.models.registry` for the conventions
(``classifier``, ``taps``, ``preact_taps``, ``preact_bn``) that every zoo model follows.
"""

from __future__ import annotations

from edgekd.models import (  # noqa: F401  (registers them)
    cifar_resnet,
    mobilenetv2,
    timm_models,
    torchvision_models,
    wrn,
)
from edgekd.models.budget import FAMILIES, BudgetFit, family_members, fit_to_budget
from edgekd.models.profile import count_flops, count_params
from edgekd.models.registry import available_models, create_model, get_taps, register_model

__all__ = [
    "FAMILIES",
    "BudgetFit",
    "available_models",
    "count_flops",
    "count_params",
    "create_model",
    "family_members",
    "fit_to_budget",
    "get_taps",
    "register_model",
]
