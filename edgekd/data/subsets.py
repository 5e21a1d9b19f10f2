"""Class subsets and few-shot training sets, as index filters on a split.

The specialization scenario: the teacher knows every class, the student only `classes`, relabelled 0..K-1 in
the order given; with `per_class`, the student also sees only a few training images of each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgekd.data.splits import FEW_SHOT_SALT, seeded_rng
from edgekd.errors import EdgekdError


def check_class_ids(class_ids: Sequence[int], num_classes: int) -> None:
    """Every id must name a class of the data set (the recipe can only check data sets of known size)."""
    bad = [c for c in class_ids if not 0 <= c < num_classes]
    if bad:
        raise EdgekdError(
            f"data.classes: class id {bad[0]} is out of range; the data set has {num_classes} classes "
            f"(allowed: 0..{num_classes - 1})"
        )


def label_lookup(class_ids: Sequence[int], num_classes: int) -> np.ndarray:
    """Array mapping an original label to its new label (-1 for classes left out)."""
    lookup = np.full(num_classes, -1, dtype=np.int64)
    lookup[np.asarray(class_ids, dtype=np.int64)] = np.arange(len(class_ids), dtype=np.int64)
    return lookup


def keep_classes(indices: np.ndarray, labels: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """The indices whose label is one of `class_ids`, in their original order."""
    return indices[np.isin(labels[indices], np.asarray(class_ids, dtype=np.int64))]


def few_shot(
    indices: np.ndarray, labels: np.ndarray, per_class: int, class_ids: Sequence[int], seed: int
) -> np.ndarray:
    """`per_class` indices of each class, drawn from `indices` (the training split).

    Each class is drawn by its own seeded shuffle, taking the first `per_class`: the draw of a class does not
    depend on which other classes are kept, and a smaller N picks a subset of what a larger N picks.
    """
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    members = {c: indices[labels[indices] == c] for c in class_ids}
    smallest = min(members, key=lambda c: len(members[c]))
    if not len(members[smallest]):
        raise EdgekdError(
            f"data.per_class: class {smallest} has no image in the training split, so {per_class} per class "
            f"cannot be drawn (allowed: classes with training images)"
        )
    if per_class > len(members[smallest]):
        raise EdgekdError(
            f"data.per_class: {per_class} is more than the training split holds for class {smallest} "
            f"({len(members[smallest])} images, the smallest class); allowed: 1..{len(members[smallest])}"
        )
    chosen = [
        class_members[seeded_rng(seed, FEW_SHOT_SALT, int(c)).permutation(len(class_members))[:per_class]]
        for c, class_members in members.items()
    ]
    return np.sort(np.concatenate(chosen))
