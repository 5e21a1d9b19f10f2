"""The recipe: one YAML file that states a whole run, validated into frozen, typed sections.

Recipes are data, never code: they are read with ``yaml.safe_load`` (no object tags) and every default lives
in this schema, so ``edgekd schema`` shows all of it. Unknown keys are errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from edgekd.errors import RecipeError

# Class counts of the data sets whose label set is known without reading them.
KNOWN_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "mnist": 10, "fashionmnist": 10}
DATASETS_NEEDING_ROOT = ("cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder")


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors and a loaded recipe cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


_COUNT_SUFFIXES = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_count(value: Any) -> Any:
    """Read '200k', '1.5M' or 200000 as an integer count; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", value)
        if match:
            number, suffix = match.groups()
            return int(round(float(number) * _COUNT_SUFFIXES.get(suffix.lower(), 1)))
    return value


Count = Annotated[int, BeforeValidator(parse_count), Field(gt=0)]


# ----------------------------------------------------------------------------------------------- data
class DataConfig(Section):
    """Where the images come from and how they are split, subset and fed."""

    dataset: Literal["digits", "cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder"] = Field(
        "digits", description="'digits' is scikit-learn's bundled 8x8 handwritten digits: no download needed."
    )
    root: Path | None = Field(None, description="Local folder of a torchvision data set or an ImageFolder tree.")
    download: bool = Field(False, description="Let torchvision download the data set into `root`.")
    image_size: int | None = Field(None, ge=4, description="Resize images to this square size; null keeps it.")
    channels: Literal[1, 3] | None = Field(
        None, description="Force 1 (grayscale) or 3 (RGB) input channels; null keeps the data set's own."
    )
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Part of the training pool held out for model selection.")
    test_fraction: float = Field(
        0.2, gt=0, lt=0.5, description="Part held out as test set, for data sets without an official test split."
    )
    split_seed: int = Field(0, description="Seed of the train/val/test split (kept apart from the run's seed).")
    classes: list[int] | None = Field(
        None, min_length=1, description="The student's classes (original ids), remapped to 0..K-1 in this order."
    )
    per_class: int | None = Field(None, ge=1, description="Few-shot: keep this many training images per class.")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    augment: Literal["none", "crop", "crop_flip"] = Field(
        "none", description="Training augmentation: random crop (padding 1/8 of the size), optionally with flips."
    )

    @model_validator(mode="after")
    def _check_sources(self) -> DataConfig:
        if self.dataset in DATASETS_NEEDING_ROOT:
            if self.root is None:
                raise ValueError(f"dataset '{self.dataset}' needs `root`, the local folder that holds it")
            if not self.download and not self.root.exists():
                raise ValueError(
                    f"root '{self.root}' does not exist (set `download: true` to let torchvision fetch it)"
                )
        if self.classes is not None:
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes {self.classes} repeat an id")
            total = KNOWN_NUM_CLASSES.get(self.dataset)
            bad = [c for c in self.classes if c < 0 or (total is not None and c >= total)]
            if bad:
                allowed = f"0..{total - 1}" if total else ">= 0"
                raise ValueError(f"class id {bad[0]} is out of range for '{self.dataset}' (allowed: {allowed})")
        return self
