"""Class subsets, as index filters on a split.

The specialization scenario: the teacher knows every class, the student only `classes`, relabelled 0..K-1 in
the order given (few-shot draws: ``student_images.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgekd.errors import EdgekdError


def check_class_ids(class_ids: Sequence[int], num_classes: int, field: str = "data.classes") -> None:
    """Every id must name a class of the data set (the recipe can only check data sets of known size)."""
    bad = [c for c in class_ids if not 0 <= c < num_classes]
    if bad:
        raise EdgekdError(
            f"{field}: class id {bad[0]} is out of range; the data set has {num_classes} classes "
            f"(allowed: 0..{num_classes - 1})"
        )


def label_relation(teacher_ids: Sequence[int], student_ids: Sequence[int]) -> str:
    """How the student's classes relate to the teacher's: 'same', 'subset' (specialization) or 'disjoint'
    (cross-task). A partial overlap is none of these and is refused."""
    teacher, student = set(teacher_ids), set(student_ids)
    if student == teacher:
        return "same"
    if student < teacher:
        return "subset"
    if not student & teacher:
        return "disjoint"
    shared = sorted(student & teacher)
    raise EdgekdError(
        f"data.classes: the student's classes share {shared[:5]} with teacher.classes but not all of them; "
        "allowed: the teacher's classes, a subset of them, or classes the teacher has none of"
    )


def label_lookup(class_ids: Sequence[int], num_classes: int) -> np.ndarray:
    """Array mapping an original label to its new label (-1 for classes left out)."""
    lookup = np.full(num_classes, -1, dtype=np.int64)
    lookup[np.asarray(class_ids, dtype=np.int64)] = np.arange(len(class_ids), dtype=np.int64)
    return lookup


def keep_classes(indices: np.ndarray, labels: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """The indices whose label is one of `class_ids`, in their original order."""
    return indices[np.isin(labels[indices], np.asarray(class_ids, dtype=np.int64))]
