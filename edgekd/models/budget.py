"""Fit a model family to a parameter budget: the largest member that fits.

Each family is an explicit list of configurations spanning depth and width. Parameter counts come from
building each member on the meta device (no memory, no initialization cost); FLOPs are counted only for the
members that tie for the largest fitting parameter count (usually one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import torch

from edgekd.errors import EdgekdError
from edgekd.models._common import positive_int
from edgekd.models.profile import count_flops, count_params
from edgekd.models.registry import create_model
from edgekd.models.timm_models import TIMM_FAMILIES, TIMM_GRID_AXES, timm_family_members, timm_member_size

Member = tuple[str, dict[str, Any]]

_RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
_RESNET_WIDTHS = (8, 16, 32, 64)
_WRN_DEPTHS = (10, 16, 22, 28, 40)
_WRN_WIDENS = (1, 2, 3, 4, 6, 8, 10)
_MOBILENETV2_WIDTHS = tuple(round(0.10 + 0.05 * step, 2) for step in range(27))  # 0.10, 0.15, ..., 1.40


def _resnet_members() -> list[Member]:
    return [(f"resnet{depth}", {"width": width}) for depth in _RESNET_DEPTHS for width in _RESNET_WIDTHS]


def _wrn_members() -> list[Member]:
    return [(f"wrn_{depth}_{widen}", {}) for depth in _WRN_DEPTHS for widen in _WRN_WIDENS]


def _mobilenetv2_members() -> list[Member]:
    return [("mobilenetv2", {"width_mult": width}) for width in _MOBILENETV2_WIDTHS]


_FAMILY_MEMBERS = {
    "resnet": _resnet_members,
    "wrn": _wrn_members,
    "mobilenetv2": _mobilenetv2_members,
    # timm's families need timm only when a member is built, so they are listed without it
    **{family: partial(timm_family_members, family) for family in TIMM_FAMILIES},
}
FAMILIES: tuple[str, ...] = tuple(_FAMILY_MEMBERS)
# What each coordinate of member_size() is, per family.
GRID_AXES: dict[str, tuple[str, ...]] = {
    "resnet": ("depth", "width"),
    "wrn": ("depth", "widen"),
    "mobilenetv2": ("width_mult",),
    **TIMM_GRID_AXES,
}


@dataclass(frozen=True)
class BudgetFit:
    """The chosen member.

    Build it with ``create_model(fit.model, num_classes, in_channels, **fit.model_args)``.
    """

    model: str
    model_args: dict[str, Any]
    params: int
    flops: int  # of one image of the requested size
    budget: int
    candidates_considered: int


def family_members(family: str) -> list[Member]:
    """The candidate ``(model name, model_args)`` pairs of a family, in no particular size order."""
    if family not in _FAMILY_MEMBERS:
        raise EdgekdError(f"student.family: '{family}' is unknown; choose one of {', '.join(FAMILIES)}")
    return _FAMILY_MEMBERS[family]()


def member_size(member: Member) -> tuple[float, ...]:
    """The member's place on its family's grid: (depth, width) for resnet, (depth, widen) for wrn,
    (width_mult,) for mobilenetv2, timm's multipliers for a timm family (timm_models.TIMM_FAMILIES). One
    member dominates another when every coordinate is >= (so it does at least the same work per image):
    latency sizing infers over/under from that without timing both."""
    name, model_args = member
    numbers = [float(n) for n in re.findall(r"\d+", name)]
    if name.startswith("resnet"):
        return (numbers[0], float(model_args.get("width", 16)))
    if name.startswith("wrn_"):
        return (numbers[0], numbers[1])
    if name == "mobilenetv2":
        return (float(model_args.get("width_mult", 1.0)),)
    timm_size = timm_member_size(name)
    if timm_size is not None and not model_args:
        return tuple(float(coordinate) for coordinate in timm_size)
    raise EdgekdError(f"student.family: no size grid for member '{describe_member(*member)}'")


def describe_grid(family: str) -> list[str]:
    """The family's size grid in words: one line of each axis's values, then, for a family of named
    variants (timm's), one line per member with its place on the grid."""
    members = family_members(family)
    axes = GRID_AXES[family]
    sizes = [member_size(member) for member in members]
    lines = [
        f"{axis}: " + ", ".join(f"{value:g}" for value in sorted({size[index] for size in sizes}))
        for index, axis in enumerate(axes)
    ]
    if family in TIMM_FAMILIES:
        lines += [
            f"{member[0]} ({', '.join(f'{value:g}' for value in size)})"
            for member, size in zip(members, sizes, strict=True)
        ]
    return lines


def dominates(larger: tuple[float, ...], smaller: tuple[float, ...]) -> bool:
    """Every coordinate of ``larger`` is >= the same coordinate of ``smaller``."""
    return all(a >= b for a, b in zip(larger, smaller, strict=True))


def member_params(member: Member, num_classes: int, in_channels: int) -> int:
    """Parameters of a member, counted on the meta device (cached)."""
    name, args = member
    return _member_params(name, tuple(sorted(args.items())), num_classes, in_channels)


def member_flops(member: Member, num_classes: int, in_channels: int, input_size: tuple[int, int]) -> int:
    """FLOPs of one image of ``input_size`` through a member."""
    return _member_flops(member, num_classes, in_channels, _check_input_size(input_size))


def describe_member(name: str, model_args: dict[str, Any]) -> str:
    """``resnet8 with width=8``, or just the name when the member has no options."""
    if not model_args:
        return name
    return f"{name} with " + ", ".join(f"{key}={value}" for key, value in model_args.items())


@lru_cache(maxsize=1024)
def _member_params(
    name: str, frozen_args: tuple[tuple[str, Any], ...], num_classes: int, in_channels: int
) -> int:
    with torch.device("meta"):
        model = create_model(name, num_classes, in_channels, **dict(frozen_args))
    return count_params(model)


def _member_flops(member: Member, num_classes: int, in_channels: int, input_size: tuple[int, int]) -> int:
    name, model_args = member
    with torch.device("meta"):
        model = create_model(name, num_classes, in_channels, **model_args)
    return count_flops(model, (in_channels, *input_size))


def _depth(name: str) -> int:
    """The first number in a member's name (resnet20 -> 20, wrn_40_2 -> 40); 0 when it has none."""
    match = re.search(r"\d+", name)
    return int(match.group()) if match else 0


def _check_input_size(input_size: tuple[int, int]) -> tuple[int, int]:
    if len(input_size) != 2:
        raise EdgekdError(f"input_size: {input_size!r} is not allowed; give (height, width)")
    return positive_int("input_size height", input_size[0]), positive_int("input_size width", input_size[1])


def fit_to_budget(
    family: str, max_params: int, num_classes: int, in_channels: int, input_size: tuple[int, int]
) -> BudgetFit:
    """The member of ``family`` with the most parameters <= ``max_params``; ties go to fewer FLOPs, then
    to the shallower member. EdgekdError when even the smallest member is too large."""
    members = family_members(family)
    budget = positive_int("student.budget.params", max_params)
    size = _check_input_size(input_size)
    params = [
        _member_params(name, tuple(sorted(args.items())), num_classes, in_channels) for name, args in members
    ]
    fitting = [index for index, count in enumerate(params) if count <= budget]
    if not fitting:
        smallest = min(range(len(members)), key=params.__getitem__)
        raise EdgekdError(
            f"student.budget.params: {budget:,} is below the smallest '{family}' member "
            f"({describe_member(*members[smallest])}, {params[smallest]:,} params at {num_classes} classes)"
        )
    most = max(params[index] for index in fitting)
    tied = [index for index in fitting if params[index] == most]
    flops = {index: _member_flops(members[index], num_classes, in_channels, size) for index in tied}
    chosen = min(tied, key=lambda index: (flops[index], _depth(members[index][0]), index))
    name, model_args = members[chosen]
    return BudgetFit(
        model=name,
        model_args=dict(model_args),
        params=params[chosen],
        flops=flops[chosen],
        budget=budget,
        candidates_considered=len(members),
    )
