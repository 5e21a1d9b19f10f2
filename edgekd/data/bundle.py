"""build_data: a recipe's `data` section in, the train/val/test datasets and their loaders out.

The teacher (`subset=False`) and the student (`subset=True`) views are built from the same pool and the same
split, so the student's test images are exactly the teacher's test images of the student's classes.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, Subset

from edgekd.config.data import DataConfig, NormalizeStats
from edgekd.config.train import TeacherTrainConfig
from edgekd.data.batches import (
    EvenBatchSampler,
    SeededBatches,
    ShardedBatchSampler,
    smallest_batch,
    steps_per_epoch,
)
from edgekd.data.decoded import ImageCache
from edgekd.data.digits import load_digits_source
from edgekd.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, load_imagefolder_source
from edgekd.data.pools import ImagePool, Source
from edgekd.data.preprocess import Preprocess, adapt_stats
from edgekd.data.splits import carve_customer, make_split
from edgekd.data.student_images import draw_from_pool, draw_validation
from edgekd.data.subsets import check_class_ids, keep_classes, label_lookup, label_relation
from edgekd.data.torchvision_sets import TORCHVISION_SETS, load_torchvision_source
from edgekd.data.transforms import RandomCropFlip, make_augmentation
from edgekd.data.views import ImagesOnly, SplitView, channel_stats
from edgekd.errors import EdgekdError
from edgekd.seeds import EVAL_LOADER_SEED, UNLABELED_SEED_SALT


@dataclass(frozen=True)
class Feed:
    """How a view's training images are fed: the data section's settings, or the teacher's own."""

    batch_size: int
    augment: str
    num_workers: int


# (rank, world): which share of each batch this process of a data-parallel run reads.
Shard = tuple[int, int]


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


def close_loader(loader: DataLoader) -> None:
    """Stop a persistent loader's workers now. Left to garbage collection they outlive the stage, and torch's
    SIGCHLD handler can then crash on an unrelated child's exit; DataLoader has no public close, so this
    uses its iterator's own shutdown (what the iterator's __del__ calls)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


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
    last_batch: str = "keep"
    pin_memory: bool | None = None  # page-locked batches; None: when training on CUDA (the trainer decides)
    persistent_workers: bool = False  # one loader per stage, its workers kept (stage_loader)
    # Where the images came from and what the teacher saw of them (the report says it per model).
    provenance: dict[str, Any] = field(default_factory=dict)

    def _loader(
        self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, shard: Shard | None = None
    ) -> DataLoader:
        workers = self.num_workers
        generator = torch.Generator().manual_seed(seed)
        batching: dict[str, Any] = {"batch_size": batch_size, "shuffle": False}
        if shuffle:
            batches = self._shuffled_batches(dataset, batch_size, generator)
            # A data-parallel process reads its share of the batches one process would draw.
            batching = {"batch_sampler": batches if shard is None else ShardedBatchSampler(batches, *shard)}
        return DataLoader(
            dataset,
            **batching,
            generator=generator,
            num_workers=workers,
            # Not persistent: a new loader is made per epoch anyway, and persistent workers outlive it until
            # garbage collection, where torch's SIGCHLD handler can then crash on an unrelated child's exit.
            persistent_workers=False,
            # Workers are forked (torch's default on Linux). Forking a process in which OpenVINO or ONNX
            # Runtime already started their thread pools crashed it now and then (seen in the test suite), so
            # the pipeline trains before it loads any runtime.
            worker_init_fn=seed_worker if workers > 0 else None,
            pin_memory=bool(self.pin_memory),
        )

    def _shuffled_batches(self, dataset: Dataset, batch_size: int, generator: torch.Generator) -> Sampler:
        """An epoch's shuffled batches drawn from `generator`, the last one cut by data.last_batch."""
        if self.last_batch == "even":
            return EvenBatchSampler(len(dataset), batch_size, generator)
        return BatchSampler(
            RandomSampler(dataset, generator=generator), batch_size, drop_last=self.last_batch == "drop"
        )

    def stage_loader(self, part: Literal["train", "unlabeled"], shard: Shard | None = None) -> DataLoader:
        """One loader for a whole stage whose workers persist across epochs (`data.persistent_workers`): call
        ``loader.batch_sampler.set_epoch(seed)`` before each pass. Its batches are those of the per-epoch
        loaders' shape (the same `last_batch` rule), each image with a seed of its own for its augmentation
        (SeededBatches), so the numbers do not depend on the workers and a resumed run repeats the
        uninterrupted one. Close it with :func:`close_loader`."""
        dataset = self.train if part == "train" else self.unlabeled
        if dataset is None:
            raise ValueError("this data has no unlabelled images (data.unlabeled is 'none')")
        batch_size = self.batch_size if part == "train" else (self.unlabeled_batch_size or self.batch_size)
        salt = 0 if part == "train" else UNLABELED_SEED_SALT  # the per-epoch loaders' seeds
        make_batches = functools.partial(self._shuffled_batches, dataset, batch_size)
        return DataLoader(
            dataset,
            batch_sampler=SeededBatches(make_batches, shard, salt),
            generator=torch.Generator().manual_seed(EVAL_LOADER_SEED),
            num_workers=self.num_workers,
            persistent_workers=True,
            worker_init_fn=seed_worker,
            pin_memory=bool(self.pin_memory),
        )

    def holdout(self, fraction: float, seed: int) -> DataBundle:
        """A train/val sub-split of the training images alone: per class, `fraction` of them (at least one,
        and one left over) train, the rest score selection without augmentation. A stage that searches on it
        (DistPro's search) never reads the run's validation or test images. Seeded: one seed, one split."""
        train = self.train
        if not isinstance(train, SplitView):
            raise TypeError("a held-out split needs the training images as a SplitView")
        rng = np.random.default_rng(seed)
        labels = train.labels
        kept: list[np.ndarray] = []
        held: list[np.ndarray] = []
        for label in np.unique(labels):
            positions = rng.permutation(np.flatnonzero(labels == label))
            if len(positions) < 2:
                raise EdgekdError(
                    f"data: class {self.class_names[int(label)]} has {len(positions)} training image; a stage "
                    "that holds out part of the training images needs at least 2 per class"
                )
            cut = min(len(positions) - 1, max(1, round(fraction * len(positions))))
            kept.append(positions[:cut])
            held.append(positions[cut:])
        return replace(
            self,
            train=train.part(np.sort(np.concatenate(kept))),
            val=train.part(np.sort(np.concatenate(held)), augment=False),
        )

    def train_loader(self, seed: int, shard: Shard | None = None) -> DataLoader:
        """Training batches with augmentation, shuffled by a generator seeded with `seed`; with `shard`
        (rank, world) this process's share of each global batch."""
        return self._loader(self.train, self.batch_size, shuffle=True, seed=seed, shard=shard)

    def unlabeled_loader(self, seed: int, shard: Shard | None = None) -> DataLoader:
        """Shuffled, augmented batches of unlabelled images (tensors only); the trainer cycles through it."""
        if self.unlabeled is None:
            raise ValueError("this data has no unlabelled images (data.unlabeled is 'none')")
        batch_size = self.unlabeled_batch_size or self.batch_size
        return self._loader(
            self.unlabeled, batch_size, shuffle=True, seed=seed + UNLABELED_SEED_SALT, shard=shard
        )

    def image_indices(self) -> dict[str, list[int] | None]:
        """Which pool images each part holds (training pool for train/val/unlabelled, test pool for test)."""

        def indices(dataset: Dataset | None) -> list[int] | None:
            view = dataset.view if isinstance(dataset, ImagesOnly) else dataset
            return None if view is None else [int(i) for i in view.indices]

        return {
            "train": indices(self.train),
            "val": indices(self.val),
            "unlabeled": indices(self.unlabeled),
            "test": indices(self.test),
        }

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.train), self.batch_size, self.last_batch)

    def unlabeled_eval_loader(self) -> DataLoader:
        """The unlabelled images with their original (teacher's) labels, as evaluation sees them: only for
        measuring how well the teacher knows them, never for training."""
        if self.unlabeled is None:
            raise ValueError("this data has no unlabelled images (data.unlabeled is 'none')")
        view = self.unlabeled.view.without_augmentation()
        return self._loader(view, self.eval_batch_size, shuffle=False, seed=EVAL_LOADER_SEED)

    def eval_loader(self, split: Literal["train", "val", "test"], shard: Shard | None = None) -> DataLoader:
        """Batches in a fixed order with no augmentation ("train" shows the training images as evaluated);
        with `shard` (rank, world) every world-th image from rank on, for counts summed over processes."""
        datasets = {"train": self.train, "val": self.val, "test": self.test}
        if split not in datasets:
            raise ValueError(f"split must be one of {sorted(datasets)}, got {split!r}")
        dataset = datasets[split]
        if isinstance(dataset, SplitView):
            dataset = dataset.without_augmentation()
        if shard is not None:
            dataset = Subset(dataset, range(shard[0], len(dataset), shard[1]))
        return self._loader(dataset, self.eval_batch_size, shuffle=False, seed=EVAL_LOADER_SEED)

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
            "last_batch": self.last_batch,
            "smallest_train_batch": smallest_batch(len(self.train), self.batch_size, self.last_batch),
            **self.provenance,
        }


def load_source(cfg: DataConfig) -> Source:
    """Read the data set named by `cfg.dataset` (images processed to the requested channels and size)."""
    if cfg.dataset == "imagefolder":
        cache = ImageCache(cfg.image_cache, cfg.image_cache_dir)
        return load_imagefolder_source(
            cfg.root, image_size=cfg.image_size, channels=cfg.channels, cache=cache
        )
    size = (cfg.image_size, cfg.image_size) if cfg.image_size is not None else None
    preprocess = Preprocess(channels=cfg.channels, size=size)
    if cfg.dataset == "digits":
        return load_digits_source(preprocess)
    if cfg.dataset in TORCHVISION_SETS:
        return load_torchvision_source(cfg.dataset, cfg.root, download=cfg.download, preprocess=preprocess)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


class DataPlan:
    """One data set read and split once; the teacher's view and each student seed's view come from it.

    The teacher trains on `teacher_train`: the training split, less the customer hold-out under
    `student_pool: customer`. The student's test images are the teacher's test images of its classes; its
    training, validation and unlabelled images are drawn from its pool per `draw` seed (see
    ``student_images.py``), so every method of one seed sees the same images.
    """

    def __init__(
        self,
        cfg: DataConfig,
        teacher_classes: Sequence[int] | None = None,
        normalize: str | NormalizeStats | None = None,
    ):
        self.cfg = cfg
        # Recipe.normalization (data.normalize with `auto` resolved, which needs the teacher); without a
        # recipe, `auto` resolves as for a teacher that is not a torchvision model.
        self.normalize = normalize if normalize is not None else resolved_without_teacher(cfg)
        self.source = load_source(cfg)
        test_size = len(self.source.test_pool) if self.source.test_pool is not None else None
        self.split = make_split(
            self.source.train_pool.labels,
            test_size,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.split_seed,
        )
        labels = self.source.train_pool.labels
        if cfg.customer:
            self.teacher_train, self.customer = carve_customer(
                self.split, labels, cfg.customer_fraction, cfg.split_seed
            )
        else:
            self.teacher_train, self.customer = self.split.train, None
        self.all_ids = list(range(self.source.num_classes))
        self.teacher_ids = list(teacher_classes) if teacher_classes is not None else self.all_ids
        check_class_ids(self.teacher_ids, self.source.num_classes, "teacher.classes")
        self.student_ids = list(cfg.classes) if cfg.classes is not None else self.all_ids
        check_class_ids(self.student_ids, self.source.num_classes)
        self.relation = label_relation(self.teacher_ids, self.student_ids)

    def teacher_positions(self) -> tuple[int, ...] | None:
        """Column of the teacher's logits for each student class; None when the teacher has none of them."""
        if self.relation == "disjoint":
            return None
        return tuple(self.teacher_ids.index(c) for c in self.student_ids)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """C, H, W of every processed image (known before any image is processed)."""
        return self.source.train_pool.image_shape

    @functools.cached_property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel normalization (mean, std), computed on first use: reading every training image is
        the slow part of a plan, so callers can check what a run needs before paying for it.

        Statistics come from the teacher's training images, so teacher and student see identically
        normalized inputs, and a customer's images play no part in the teacher's preprocessing."""
        channels = self.image_shape[0]
        chosen = self.normalize
        if isinstance(chosen, NormalizeStats):
            if len(chosen.mean) != channels:
                raise EdgekdError(
                    f"data.normalize: {len(chosen.mean)} values of mean and std for {channels}-channel images; "
                    f"allowed: {channels}"
                )
            return tuple(chosen.mean), tuple(chosen.std)
        if chosen == "imagenet":
            return adapt_stats(IMAGENET_MEAN, channels), adapt_stats(IMAGENET_STD, channels)
        if chosen == "dataset" and self.source.mean is not None and self.source.std is not None:
            return self.source.mean, self.source.std
        labels = self.source.train_pool.labels
        return channel_stats(
            self.source.train_pool, keep_classes(self.teacher_train, labels, self.teacher_ids)
        )

    @property
    def test_pool(self) -> ImagePool:
        return self.source.test_pool if self.source.test_pool is not None else self.source.train_pool

    def draw_seed(self, seed: int | None) -> int | None:
        """The seed of the student's draws for a student seed (None: the fixed draw of split_seed)."""
        return seed if self.cfg.draws == "per_seed" and seed is not None else None

    def teacher(self, train: TeacherTrainConfig | None = None) -> DataBundle:
        """Every class, the teacher's training images, the shared validation and test splits; fed as
        `train` (the teacher's training section, when the run trains it) says, else as the data section."""
        split, ids, labels = self.split, self.teacher_ids, self.source.train_pool.labels
        images = keep_classes(self.teacher_train, labels, ids)
        feed = None
        if train is not None:
            feed = Feed(
                batch_size=train.resolved_batch_size(self.cfg, len(images)),
                augment=train.augment if train.augment is not None else self.cfg.augment,
                num_workers=train.num_workers if train.num_workers is not None else self.cfg.num_workers,
            )
        return self._bundle(
            ids,
            images,
            keep_classes(split.val, labels, ids),
            keep_classes(split.test, self.test_pool.labels, ids),
            unlabeled=None,
            per_class=None,
            provenance={"role": "teacher", "student_pool": self.cfg.student_pool},
            feed=feed,
        )

    def student(self, seed: int | None = None) -> DataBundle:
        """The student's view for one student seed: its classes, drawn images, unlabelled images."""
        cfg, labels, ids = self.cfg, self.source.train_pool.labels, self.student_ids
        draw = self.draw_seed(seed)
        pool = self.customer if self.customer is not None else self.teacher_train
        pool = keep_classes(pool, labels, ids)
        from_pool_val = cfg.val_per_class if cfg.customer else None
        train, val = draw_from_pool(
            pool,
            labels,
            ids,
            per_class=cfg.per_class,
            val_per_class=from_pool_val,
            split_seed=cfg.split_seed,
            draw=draw,
        )
        if val is None:
            val = keep_classes(self.split.val, labels, ids)
            if cfg.val_per_class is not None:
                val = draw_validation(
                    val, labels, ids, cfg.val_per_class, split_seed=cfg.split_seed, draw=draw
                )
        test = keep_classes(self.split.test, self.test_pool.labels, ids)
        unlabeled = self._unlabeled(pool, np.union1d(train, val)) if cfg.unlabeled != "none" else None
        return self._bundle(
            ids,
            train,
            val,
            test,
            unlabeled=unlabeled,
            per_class=cfg.per_class,
            provenance=self._student_provenance(draw),
        )

    def _unlabeled(self, student_pool: np.ndarray, labelled: np.ndarray) -> np.ndarray:
        """The student's pool ('subset') or every class of it ('all'), less the images it has labels for."""
        cfg = self.cfg
        if cfg.unlabeled == "subset":
            candidates = student_pool
        else:
            candidates = self.customer if self.customer is not None else self.teacher_train
        unlabeled = np.setdiff1d(candidates, labelled)
        if not len(unlabeled):
            raise EdgekdError(
                f"data.unlabeled: '{cfg.unlabeled}' leaves no training image without a label (the student is "
                "given every one); allowed: 'none', or a smaller per_class"
            )
        return unlabeled

    def _decode_record(self) -> dict[str, Any]:
        """`image_files`: how many files this run decoded and how many came from the disk cache."""
        counts = _decode_counts(self.source)
        return {"image_files": counts} if counts else {}

    def _student_provenance(self, draw: int | None) -> dict[str, Any]:
        """What the report says about the student's images: where from, and what the teacher saw of them."""
        cfg = self.cfg
        if cfg.customer:
            val_source = "customer pool" if cfg.val_per_class else "validation split"
        else:
            val_source = "validation split"
        return {
            "role": "student",
            "student_pool": cfg.student_pool,
            "customer_fraction": cfg.customer_fraction if cfg.customer else None,
            "draw_seed": draw,
            "draws": cfg.draws,
            "val_per_class": cfg.val_per_class,
            "val_source": val_source,
            # The teacher trained on the student's pool only under the paper's protocol (it selects its own
            # epoch on the validation split, which val_source says when the student's val comes from it),
            # and never when it has none of the student's classes.
            "teacher_trained_on_student_images": not cfg.customer and self.relation != "disjoint",
            "label_relation": self.relation,
            "teacher_classes": list(self.teacher_ids),
        }

    def _bundle(
        self,
        class_ids: list[int],
        train: np.ndarray,
        val: np.ndarray,
        test: np.ndarray,
        *,
        unlabeled: np.ndarray | None,
        per_class: int | None,
        provenance: dict[str, Any],
        feed: Feed | None = None,
    ) -> DataBundle:
        cfg, source = self.cfg, self.source
        feed = feed or Feed(cfg.batch_size, cfg.augment, cfg.num_workers)
        lookup = None if class_ids == self.all_ids else label_lookup(class_ids, source.num_classes)
        provenance = {**provenance, **self._decode_record()}

        mean, std = self.stats

        def view(pool: ImagePool, indices: np.ndarray, augment: RandomCropFlip | None = None) -> SplitView:
            return SplitView(pool, indices, mean=mean, std=std, label_lookup=lookup, augment=augment)

        images_only = None
        if unlabeled is not None:
            # No relabelling: images of classes outside the subset have no student label anyway.
            images_only = ImagesOnly(
                SplitView(
                    source.train_pool,
                    unlabeled,
                    mean=mean,
                    std=std,
                    augment=make_augmentation(cfg.augment),
                )
            )
        channels, height, width = source.train_pool.image_shape
        is_student = provenance["role"] == "student"
        return DataBundle(
            train=view(source.train_pool, train, make_augmentation(feed.augment)),
            val=view(source.train_pool, val),
            test=view(self.test_pool, test),
            num_classes=len(class_ids),
            class_names=[source.class_names[c] for c in class_ids],
            class_ids=class_ids,
            input_spec=InputSpec(channels, height, width, tuple(mean), tuple(std)),
            batch_size=feed.batch_size,
            eval_batch_size=cfg.eval_batch_size,
            num_workers=feed.num_workers,
            dataset=cfg.dataset,
            per_class=per_class,
            is_subset=is_student and cfg.classes is not None,
            official_test=self.split.official_test,
            unlabeled=images_only,
            unlabeled_source=cfg.unlabeled if images_only is not None else "none",
            unlabeled_batch_size=cfg.unlabeled_batch_size,
            last_batch=cfg.last_batch,
            pin_memory=cfg.pin_memory,
            persistent_workers=cfg.persistent_workers and feed.num_workers > 0,
            provenance=provenance,
        )


def _decode_counts(source: Source) -> dict[str, Any]:
    """Per stored split, what opening its image files cost (decoded.py); empty for in-memory data sets."""
    pools = {"train": source.train_pool, "test": source.test_pool}
    return {
        split: pool.decode_count.to_dict()
        for split, pool in pools.items()
        if getattr(pool, "decode_count", None) is not None
    }


def resolved_without_teacher(cfg: DataConfig) -> str | NormalizeStats:
    if cfg.normalize != "auto":
        return cfg.normalize
    return "train" if cfg.dataset == "imagefolder" else "dataset"


def build_data(
    cfg: DataConfig,
    *,
    subset: bool = True,
    seed: int | None = None,
    normalize: str | NormalizeStats | None = None,
) -> DataBundle:
    """The teacher's view (`subset=False`: every class, the teacher's training images) or the student's view
    for student seed `seed` (`subset=True`: `classes`, `per_class`, `val_per_class` and `unlabeled` applied).

    `classes` is checked in both views, so a bad value fails before a teacher is trained.
    """
    plan = DataPlan(cfg, normalize=normalize)
    return plan.student(seed) if subset else plan.teacher()
