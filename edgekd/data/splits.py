"""Deterministic, stratified train/val/test splits.

Every class is shuffled by its own legacy NumPy RandomState, seeded from (split_seed, purpose, class id).
RandomState's streams are frozen by NumPy's compatibility policy, so a config gives the same indices on any
machine and NumPy version; seeding per class also keeps a class's split independent of the other classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekd.seeds import CUSTOMER_SALT, TEST_SALT, VAL_SALT, seeded_rng


def holdout_count(class_size: int, fraction: float) -> int:
    """How many of a class to hold out: the rounded fraction, but at least one and never the whole class, so
    that every class with two or more images shows up on both sides."""
    if class_size < 2:
        return 0
    wanted = int(np.floor(class_size * fraction + 0.5))
    return min(max(wanted, 1), class_size - 1)


def stratified_holdout(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, salt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` (into `labels`) into (kept, held out), holding out `fraction` of each class."""
    kept, held = [], []
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    index_labels = labels[indices]
    for label in np.unique(index_labels):
        members = indices[index_labels == label]
        order = seeded_rng(seed, salt, int(label)).permutation(len(members))
        count = holdout_count(len(members), fraction)
        held.append(members[order[:count]])
        kept.append(members[order[count:]])
    return _sorted_union(kept), _sorted_union(held)


def _sorted_union(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Split:
    """Sorted index arrays. train and val index the training pool; test indexes the official test pool when
    `official_test`, else the training pool."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    official_test: bool


def make_split(
    train_labels: np.ndarray, test_size: int | None, *, val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """With an official test split (`test_size` images) only val is carved from the training pool; without
    one, test is carved first and val from what is left."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    pool = np.arange(len(train_labels), dtype=np.int64)
    if test_size is not None:
        rest, test = pool, np.arange(test_size, dtype=np.int64)
    else:
        rest, test = stratified_holdout(pool, train_labels, test_fraction, seed, TEST_SALT)
    train, val = stratified_holdout(rest, train_labels, val_fraction, seed, VAL_SALT)
    return Split(train=train, val=val, test=test, official_test=test_size is not None)


def carve_customer(
    split: Split, train_labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(the teacher's training images, the customer's images): `fraction` of each class of the training split
    is held out, never shown to the teacher, for the student to draw from."""
    return stratified_holdout(split.train, np.asarray(train_labels), fraction, seed, CUSTOMER_SALT)
