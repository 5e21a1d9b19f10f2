"""Distillation methods behind one interface (`Distiller`), found by name in a registry.

`DistillContext` and `Distiller` (torch) are imported from base.py on first access, so that importing the
registry, which a recipe does to build its `distill:` section, does not import torch.
"""

from typing import Any

from edgekd.distill.registry import get_method, implements, method_names

__all__ = ["DistillContext", "Distiller", "get_method", "implements", "method_names"]

_FROM_BASE = ("DistillContext", "Distiller")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from edgekd.distill import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
