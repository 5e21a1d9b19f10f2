"""The recipe's `data:` section: where the images come from, how they are split, subset, normalized and fed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from edgekd.config.units import LoosePath
from edgekd.schema_base import (
    MAX_BATCH,
    MAX_IMAGE_SIZE,
    MAX_IMAGES,
    MAX_SEED,
    Section,
    shown_value,
)

KNOWN_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "mnist": 10, "fashionmnist": 10}
DATASETS_NEEDING_ROOT = ("cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder")


def check_unique_classes(classes: list[int]) -> None:
    """A class list (the student's or the teacher's) names each class once."""
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes: {shown_value(classes)} repeats an id")


class NormalizeStats(Section):
    """Explicit per-channel normalization: what the teacher was trained with, e.g. a model's own values."""

    mean: list[Annotated[float, Field(ge=-10, le=10)]] = Field(min_length=1, max_length=3)
    std: list[Annotated[float, Field(gt=0, le=10)]] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeStats:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values, std {len(self.std)}; allowed: one per channel"
            )
        return self


NormalizeMode = Literal["auto", "train", "imagenet", "dataset"]


class DataConfig(Section):
    """Where the images come from and how they are split, subset and fed."""

    dataset: Literal["digits", "cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder"] = Field(
        "digits", description="'digits' is scikit-learn's bundled 8x8 handwritten digits: no download needed."
    )
    root: LoosePath | None = Field(
        None, description="Local folder of a torchvision data set or an ImageFolder tree."
    )
    download: bool = Field(False, description="Let torchvision download the data set into `root`.")
    normalize: NormalizeMode | NormalizeStats = Field(
        "auto",
        description="Per-channel mean/std the images are normalized with (recorded in metrics.json and in every "
        "artifact's metadata). train: computed on the teacher's training images; imagenet: ImageNet's; "
        "dataset: the data set's published values (ImageNet's for an ImageFolder; digits: train); "
        "{mean: [...], std: [...]}: given. auto: imagenet for a torchvision or timm teacher (their ImageNet default), "
        "train for an ImageFolder, dataset otherwise.",
    )
    image_cache: Literal["auto", "memory", "disk", "off"] = Field(
        "auto",
        description="ImageFolder: decode each image file once, to the fed size and channels (uint8), instead of "
        "on every epoch. auto: in memory when that takes at most a quarter of the available memory, else on "
        "disk (image_cache_dir); memory; disk (a cache later runs reuse; a changed file is decoded again); off: "
        "read every file on every load.",
    )
    image_cache_dir: LoosePath | None = Field(
        None,
        description="Folder of the disk image cache; null: $XDG_CACHE_HOME/edgekd/images (~/.cache/edgekd/images).",
    )
    image_size: int | None = Field(
        None, ge=4, le=MAX_IMAGE_SIZE, description="Resize images to this square size; null keeps it."
    )
    channels: Literal[1, 3] | None = Field(
        None, description="Force 1 (grayscale) or 3 (RGB) input channels; null keeps the data set's own."
    )
    val_fraction: float = Field(
        0.15, gt=0, lt=0.5, description="Part of the training pool held out for model selection."
    )
    test_fraction: float = Field(
        0.2,
        gt=0,
        lt=0.5,
        description="Part held out as test set, for data sets without an official test split.",
    )
    split_seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the train/val/test split (kept apart from the run's seed)."
    )
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        max_length=100_000,
        description="The student's classes (original ids), remapped to 0..K-1 in this order.",
    )
    per_class: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGES,
        description="Few-shot: the student gets this many labelled training images per class, drawn from "
        "`student_pool`.",
    )
    student_pool: Literal["teacher_train", "customer"] = Field(
        "teacher_train",
        description="Where the student's images (labelled, unlabelled, and validation with val_per_class) "
        "come from. 'teacher_train': the teacher's own training images (the SKD paper's protocol: the "
        "teacher has seen, with labels, every image the student learns from). 'customer': a hold-out of "
        "the training pool (`customer_fraction` of each class) that the teacher never sees, as when a "
        "customer brings new images of its classes.",
    )
    customer_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="With student_pool 'customer': the part of each class's training images held out from "
        "the teacher for the student.",
    )
    draws: Literal["per_seed", "fixed"] = Field(
        "per_seed",
        description="The student's few-shot, validation and unlabelled draws: 'per_seed' draws them anew "
        "for every student seed (every method of one seed gets the same draw, so comparisons stay paired); "
        "'fixed' uses one draw (from split_seed) for all seeds.",
    )
    val_per_class: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGES,
        description="Select the student on this many labelled validation images per class, drawn from "
        "the student's pool under 'customer' (disjoint from its training images) and from the validation "
        "split otherwise. Null: the whole validation split of the student's classes.",
    )
    last_batch: Literal["even", "drop", "keep"] = Field(
        "even",
        description="Training batches when batch_size does not divide the images: 'even' spreads them over "
        "ceil(N / batch_size) batches of nearly equal size (none smaller than half a batch), 'drop' drops "
        "the remainder each epoch, 'keep' keeps a smaller last batch (it can hold 1 image: degenerate "
        "BatchNorm statistics and relational terms).",
    )
    unlabeled: Literal["none", "subset", "all"] = Field(
        "none",
        description="Images of the student's pool it is not given labels for, shown to the methods' "
        "label-free distillation terms (a transfer set): 'subset' = those of the student's classes, 'all' = "
        "those of every class. Under student_pool 'customer' they are customer images the teacher never saw; "
        "under 'teacher_train' they are the teacher's own training images. Baselines without a teacher "
        "never see them.",
    )
    unlabeled_batch_size: int | None = Field(
        None, ge=1, le=MAX_BATCH, description="Unlabelled images per training step; null: batch_size."
    )
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    eval_batch_size: int = Field(256, ge=1, le=MAX_BATCH)
    num_workers: int = Field(
        0, ge=0, le=256, description="DataLoader worker processes (per training process)."
    )
    persistent_workers: bool = Field(
        False,
        description="Keep the loader's worker processes from epoch to epoch (one loader per training stage) "
        "instead of starting them every epoch; each image then carries its own augmentation seed, so the "
        "numbers stay reproducible. Needs num_workers >= 1.",
    )
    pin_memory: bool | None = Field(
        None,
        description="Page-locked host batches, copied to the GPU without blocking the step; null: on when "
        "training on CUDA.",
    )
    augment: Literal["none", "crop", "crop_flip", "resized_crop_flip"] = Field(
        "none",
        description="Training augmentation: random crop (padding 1/8 of the size), optionally with flips "
        "(small images: digits, CIFAR); resized_crop_flip: ImageNet's random-resized crop (8-100 % of the area, "
        "aspect 3/4-4/3) and flips, for large images (224²).",
    )

    @model_validator(mode="after")
    def _check_sources(self) -> DataConfig:
        if self.dataset in DATASETS_NEEDING_ROOT:
            if self.root is None:
                raise ValueError(
                    f"root: dataset '{self.dataset}' needs `root`, the local folder that holds it"
                )
            if not self.download and not self.root.exists():
                how = (
                    "an ImageFolder tree: <root>/<class>/<image>"
                    if self.dataset == "imagefolder"
                    else "set `download: true` to let torchvision fetch it"
                )
                raise ValueError(f"root: '{self.root}' does not exist ({how})")
        if self.classes is not None:
            check_unique_classes(self.classes)
            total = KNOWN_NUM_CLASSES.get(self.dataset)
            bad = [c for c in self.classes if c < 0 or (total is not None and c >= total)]
            if bad:
                allowed = f"0..{total - 1}" if total else ">= 0"
                raise ValueError(
                    f"classes: class id {bad[0]} is out of range for '{self.dataset}' (allowed: {allowed})"
                )
        return self

    @property
    def customer(self) -> bool:
        return self.student_pool == "customer"

    @model_validator(mode="after")
    def _check_unlabeled(self) -> DataConfig:
        if self.unlabeled == "subset" and self.per_class is None:
            raise ValueError(
                "unlabeled: 'subset' needs per_class (without it every training image of the student's "
                "classes is already labelled); allowed: 'none', or set per_class"
            )
        if self.unlabeled == "all" and self.per_class is None and self.classes is None:
            raise ValueError(
                "unlabeled: 'all' needs classes or per_class (without them every training image is already "
                "labelled); allowed: 'none'"
            )
        return self

    @model_validator(mode="after")
    def _check_persistent_workers(self) -> DataConfig:
        if self.persistent_workers and self.num_workers == 0:
            raise ValueError(
                "persistent_workers: true needs worker processes, but num_workers is 0; allowed: "
                "num_workers >= 1, or persistent_workers: false"
            )
        return self
