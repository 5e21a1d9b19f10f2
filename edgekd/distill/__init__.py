"""Distillation methods behind one interface (`Distiller`), found by name in a registry."""

from edgekd.distill.base import DistillContext, Distiller
from edgekd.distill.registry import get_method, method_names, register_method

__all__ = ["DistillContext", "Distiller", "get_method", "method_names", "register_method"]
