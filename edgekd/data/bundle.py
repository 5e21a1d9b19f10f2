"""build_data: a recipe's `data` section in, the train/val/test datasets and their loaders out.

The teacher (`subset=False`) and the student (`subset=True`) views are built from the same pool and the same
split, so the student's test images are exactly the teacher's test images of the student's classes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgekd.data.digits import load_digits_source
from edgekd.data.imagefolder import load_imagefolder_source
from edgekd.data.pools import ImagePool, Source
from edgekd.data.preprocess import Preprocess
from edgekd.data.splits import Split, make_split
from edgekd.data.subsets import check_class_ids, few_shot, keep_classes, label_lookup
from edgekd.data.torchvision_sets import TORCHVISION_SETS, load_torchvision_source
from edgekd.data.transforms import RandomCropFlip, make_augmentation
from edgekd.data.views import ImagesOnly, SplitView, channel_stats
from edgekd.errors import EdgekdError
from edgekd.recipe import DataConfig

# The unlabelled images' shuffle is seeded apart from the labelled one's: same epoch seed, different order.
_UNLABELED_SEED_SALT = 7_919
# Evaluation draws nothing at random, but a DataLoader iterator always draws a base seed; a fixed generator
# keeps that draw from consuming the global RNG the trainer seeds for augmentation.
_EVAL_LOADER_SEED = 0


@dataclass(frozen=True)
class InputSpec:
    """What a deployed model must be fed: C×H×W float images scaled to [0, 1], then (x - mean) / std."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: torch seeds each worker from the loader's generator; carry that seed over to
    NumPy and `random` so any code using them in a worker is deterministic too."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class DataBundle:
    """The three splits of one view of the data, with what is needed to feed and to describe them."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    class_names: list[str]  # in remapped order
    class_ids: list[int]  # original id of each remapped label (identity when no subset)
    input_spec: InputSpec
    batch_size: int
    eval_batch_size: int
    num_workers: int
    dataset: str = ""
    per_class: int | None = None  # few-shot training images per class, when applied
    is_subset: bool = False  # True when `class_ids` is a chosen subset of the data set's classes
    official_test: bool = False  # test is the data set's own test split (else carved from its training pool)
    # Training images without labels, for label-free distillation terms (`data.unlabeled`); None: none.
    unlabeled: Dataset | None = None
    unlabeled_source: str = "none"
    unlabeled_batch_size: int | None = None

    def _loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=False,
            generator=torch.Generator().manual_seed(seed),
            num_workers=workers,
            # Not persistent: a new loader is made per epoch anyway, and persistent workers outlive it until
            # garbage collection, where torch's SIGCHLD handler can then crash on an unrelated child's exit.
            persistent_workers=False,
            # Workers are forked (torch's default on Linux). Forking a process in which OpenVINO or ONNX
            # Runtime already started their thread pools crashed it now and then (seen in the test suite), so
            # the pipeline trains before it loads any runtime.
            worker_init_fn=seed_worker if workers > 0 else None,
        )

    def train_loader(self, seed: int) -> DataLoader:
        """Training batches with augmentation, shuffled by a generator seeded with `seed`."""
        return self._loader(self.train, self.batch_size, shuffle=True, seed=seed)

    def unlabeled_loader(self, seed: int) -> DataLoader:
        """Shuffled, augmented batches of unlabelled images (tensors only); the trainer cycles through it."""
        if self.unlabeled is None:
            raise ValueError("this data has no unlabelled images (data.unlabeled is 'none')")
        batch_size = self.unlabeled_batch_size or self.batch_size
        return self._loader(self.unlabeled, batch_size, shuffle=True, seed=seed + _UNLABELED_SEED_SALT)

    def eval_loader(self, split: Literal["train", "val", "test"]) -> DataLoader:
        """Batches in a fixed order with no augmentation ("train" shows the training images as evaluated)."""
        datasets = {"train": self.train, "val": self.val, "test": self.test}
        if split not in datasets:
            raise ValueError(f"split must be one of {sorted(datasets)}, got {split!r}")
        dataset = datasets[split]
        if isinstance(dataset, SplitView):
            dataset = dataset.without_augmentation()
        return self._loader(dataset, self.eval_batch_size, shuffle=False, seed=_EVAL_LOADER_SEED)

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "class_ids": list(self.class_ids),
            "class_subset": list(self.class_ids) if self.is_subset else None,
            "few_shot_per_class": self.per_class,
            "unlabeled": {
                "source": self.unlabeled_source,
                "images": len(self.unlabeled) if self.unlabeled is not None else 0,
            },
            "test_split": "official" if self.official_test else "carved",
            "input_spec": self.input_spec.to_dict(),
        }


def load_source(cfg: DataConfig) -> Source:
    """Read the data set named by `cfg.dataset` (images processed to the requested channels and size)."""
    if cfg.dataset == "imagefolder":
        return load_imagefolder_source(cfg.root, image_size=cfg.image_size, channels=cfg.channels)
    size = (cfg.image_size, cfg.image_size) if cfg.image_size is not None else None
    preprocess = Preprocess(channels=cfg.channels, size=size)
    if cfg.dataset == "digits":
        return load_digits_source(preprocess)
    if cfg.dataset in TORCHVISION_SETS:
        return load_torchvision_source(cfg.dataset, cfg.root, download=cfg.download, preprocess=preprocess)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


def _student_indices(
    cfg: DataConfig, source: Source, split: Split, class_ids: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split narrowed to the student's classes, with few-shot applied to the training part only."""
    train_labels = source.train_pool.labels
    test_pool = source.test_pool if source.test_pool is not None else source.train_pool
    train = keep_classes(split.train, train_labels, class_ids)
    val = keep_classes(split.val, train_labels, class_ids)
    test = keep_classes(split.test, test_pool.labels, class_ids)
    if cfg.per_class is not None:
        train = few_shot(train, train_labels, cfg.per_class, class_ids, cfg.split_seed)
    return train, val, test


def _unlabeled_indices(
    cfg: DataConfig, source: Source, split: Split, labelled: np.ndarray, class_ids: list[int]
) -> np.ndarray:
    """Training-split images the student has no label for: of its classes ('subset') or of all ('all')."""
    train_labels = source.train_pool.labels
    pool = keep_classes(split.train, train_labels, class_ids) if cfg.unlabeled == "subset" else split.train
    unlabeled = np.setdiff1d(pool, labelled)
    if not len(unlabeled):
        raise EdgekdError(
            f"data.unlabeled: '{cfg.unlabeled}' leaves no training image without a label (the student is "
            "given every one); allowed: 'none', or a smaller per_class"
        )
    return unlabeled


def build_data(cfg: DataConfig, *, subset: bool = True) -> DataBundle:
    """The teacher's view (`subset=False`: every class, every training image) or the student's view
    (`subset=True`: `classes` and `per_class` applied) of the data described by `cfg`.

    `classes` and `per_class` are checked in both views, so a bad value fails before a teacher is trained.
    """
    source = load_source(cfg)
    test_size = len(source.test_pool) if source.test_pool is not None else None
    split = make_split(
        source.train_pool.labels,
        test_size,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.split_seed,
    )
    # Statistics come from the full training split, so teacher and student see identically normalized inputs.
    if source.mean is not None and source.std is not None:
        mean, std = source.mean, source.std
    else:
        mean, std = channel_stats(source.train_pool, split.train)

    all_ids = list(range(source.num_classes))
    student_ids = list(cfg.classes) if cfg.classes is not None else all_ids
    check_class_ids(student_ids, source.num_classes)
    student_train, student_val, student_test = _student_indices(cfg, source, split, student_ids)
    if subset:
        class_ids, (train, val, test) = student_ids, (student_train, student_val, student_test)
    else:
        class_ids, (train, val, test) = all_ids, (split.train, split.val, split.test)

    lookup = None if class_ids == all_ids else label_lookup(class_ids, source.num_classes)
    test_pool = source.test_pool if source.test_pool is not None else source.train_pool

    def view(pool: ImagePool, indices: np.ndarray, augment: RandomCropFlip | None = None) -> SplitView:
        return SplitView(pool, indices, mean=mean, std=std, label_lookup=lookup, augment=augment)

    unlabeled = None
    if subset and cfg.unlabeled != "none":
        indices = _unlabeled_indices(cfg, source, split, student_train, student_ids)
        # No relabelling: images of classes outside the subset have no student label anyway.
        unlabeled = ImagesOnly(
            SplitView(source.train_pool, indices, mean=mean, std=std, augment=make_augmentation(cfg.augment))
        )

    channels, height, width = source.train_pool.image_shape
    return DataBundle(
        train=view(source.train_pool, train, make_augmentation(cfg.augment)),
        val=view(source.train_pool, val),
        test=view(test_pool, test),
        num_classes=len(class_ids),
        class_names=[source.class_names[c] for c in class_ids],
        class_ids=class_ids,
        input_spec=InputSpec(channels, height, width, tuple(mean), tuple(std)),
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        num_workers=cfg.num_workers,
        dataset=cfg.dataset,
        per_class=cfg.per_class if subset else None,
        is_subset=subset and cfg.classes is not None,
        official_test=split.official_test,
        unlabeled=unlabeled,
        unlabeled_source=cfg.unlabeled if unlabeled is not None else "none",
        unlabeled_batch_size=cfg.unlabeled_batch_size,
    )
