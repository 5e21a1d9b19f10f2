"""What a build will feed its models, in words: `edgekd validate` prints it before any training, so a user
can check the size, channels, normalization, class names and splits edgekd read from their folder."""

from __future__ import annotations

from pathlib import Path

from edgekd.config.data import NormalizeStats
from edgekd.data.bundle import DataPlan
from edgekd.data.imagefolder import find_split_dirs
from edgekd.recipe import Recipe

_SHOWN_NAMES = 8
_NORMALIZE_WORDS = {
    "train": "per-channel mean/std of the teacher's training images (computed when the build starts)",
    "imagenet": "ImageNet's mean/std",
    "dataset": "the data set's published mean/std",
}


def input_lines(recipe: Recipe, plan: DataPlan, channels_from_teacher: bool) -> list[str]:
    channels, height, width = plan.image_shape
    names = plan.source.class_names
    shown = ", ".join(names[:_SHOWN_NAMES]) + (
        f", ... ({len(names)} in all)" if len(names) > _SHOWN_NAMES else ""
    )
    if channels_from_teacher:
        channel_source = "from teacher.checkpoint's first convolution; data.channels unset"
    elif recipe.data.channels is not None:
        channel_source = "data.channels"
    else:
        channel_source = "the data set's own"
    size_source = (
        "data.image_size"
        if recipe.data.image_size is not None
        else "the first training image's"
        if recipe.data.dataset == "imagefolder"
        else "the data set's own"
    )
    return [
        f"data: {recipe.data.dataset}{_root(recipe)} - {len(names)} classes ({shown})",
        f"  input: {height}x{width} ({size_source}), {channels} channel{'s' if channels > 1 else ''} "
        f"({channel_source}), pixels scaled to [0, 1] then normalized with {_normalization(plan)}"
        + _normalization_caveat(recipe),
        f"  images: {_splits(recipe, plan)}",
    ]


def _root(recipe: Recipe) -> str:
    return f" '{recipe.data.root}'" if recipe.data.root is not None else ""


def _normalization(plan: DataPlan) -> str:
    chosen = plan.normalize
    if isinstance(chosen, NormalizeStats):
        return f"mean {list(chosen.mean)} std {list(chosen.std)} (data.normalize)"
    if chosen == "dataset" and plan.source.mean is None:
        chosen = "train"  # a data set without published values (digits)
    return f"{_NORMALIZE_WORDS.get(chosen, chosen)} (data.normalize: {plan.normalize})"


def _normalization_caveat(recipe: Recipe) -> str:
    """A loaded teacher was trained with some normalization edgekd cannot read from its checkpoint."""
    if recipe.data.normalize != "auto" or recipe.teacher.checkpoint is None:
        return ""
    return "; the teacher's checkpoint cannot say what it was trained with: if not these, set data.normalize"


def _splits(recipe: Recipe, plan: DataPlan) -> str:
    split = plan.split
    training = f"{len(split.train)} training + {len(split.val)} validation"
    if not split.official_test:
        return (
            f"{training} + {len(split.test)} test, carved from one pool "
            f"(data.val_fraction {recipe.data.val_fraction}, data.test_fraction {recipe.data.test_fraction})"
        )
    if recipe.data.dataset == "imagefolder" and recipe.data.root is not None:
        train_dir, test_dir = find_split_dirs(Path(recipe.data.root))
        return (
            f"{training} from {train_dir.name}/ (validation carved: data.val_fraction {recipe.data.val_fraction}); "
            f"{len(split.test)} test from {test_dir.name}/ (never used to choose anything)"
        )
    return f"{training} from the training split; {len(split.test)} test from the data set's own test split"
