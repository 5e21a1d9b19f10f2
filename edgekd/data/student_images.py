"""Which images the student gets: its pool, the few-shot draw, the validation draw and the unlabelled rest.

The pool is the teacher's training split (the SKD paper's protocol) or the customer hold-out the teacher
never saw. Within a class, one seeded permutation gives both draws: the training images are its first
`per_class` entries, the validation images its last `val_per_class`, so they never overlap, and the training
draw does not depend on the validation size (a smaller `per_class` picks a subset of a larger one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.seeds import FEW_SHOT_SALT, VAL_DRAW_SALT, draw_rng


def class_members(indices: np.ndarray, labels: np.ndarray, class_ids: Sequence[int]) -> dict[int, np.ndarray]:
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    return {int(c): indices[labels[indices] == c] for c in class_ids}


def draw_from_pool(
    pool: np.ndarray,
    labels: np.ndarray,
    class_ids: Sequence[int],
    *,
    per_class: int | None,
    val_per_class: int | None,
    split_seed: int,
    draw: int | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(training images, validation images or None) of each class, drawn from `pool`."""
    members_of = class_members(pool, labels, class_ids)
    smallest = min(members_of, key=lambda c: len(members_of[c]))
    available = len(members_of[smallest])
    if not available or (per_class or 0) + (val_per_class or 0) > available:
        raise EdgekdError(_too_few_message(smallest, available, per_class, val_per_class))
    train, val = [], []
    for label, members in members_of.items():
        order = members[draw_rng(split_seed, FEW_SHOT_SALT, label, draw).permutation(len(members))]
        held = len(order) - (val_per_class or 0)
        val.append(order[held:])
        train.append(order[:held] if per_class is None else order[:per_class])
    return _sorted(train), (_sorted(val) if val_per_class else None)


def draw_validation(
    val_split: np.ndarray,
    labels: np.ndarray,
    class_ids: Sequence[int],
    val_per_class: int,
    *,
    split_seed: int,
    draw: int | None,
) -> np.ndarray:
    """`val_per_class` images of each class from the validation split."""
    chosen = []
    for label, members in class_members(val_split, labels, class_ids).items():
        if val_per_class > len(members):
            raise EdgekdError(
                f"data.val_per_class: {val_per_class} is more than the validation split holds for class "
                f"{label} ({len(members)} images); allowed: 1..{len(members)}, or a larger data.val_fraction"
            )
        order = draw_rng(split_seed, VAL_DRAW_SALT, label, draw).permutation(len(members))
        chosen.append(members[order[:val_per_class]])
    return _sorted(chosen)


def _too_few_message(label: int, available: int, per_class: int | None, val_per_class: int | None) -> str:
    if not available:
        return (
            f"data.per_class: class {label} has no image in the student's pool, so none can be drawn "
            "(allowed: classes with training images)"
        )
    if val_per_class and (per_class or 0) + val_per_class > available:
        field = "data.val_per_class" if per_class is None else "data.per_class"
        return (
            f"{field}: per_class {per_class} + val_per_class {val_per_class} is more than the student's pool "
            f"holds for class {label} ({available} images, the smallest class); allowed: at most {available} "
            "together"
        )
    return (
        f"data.per_class: {per_class} is more than the student's pool holds for class {label} "
        f"({available} images, the smallest class); allowed: 1..{available}"
    )


def _sorted(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
