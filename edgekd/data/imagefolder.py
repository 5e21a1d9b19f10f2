"""Your own images in class folders, read lazily with torchvision's ImageFolder.

Layouts:
  root/<class>/<image>: one pool; test and val are carved from it.
  root/train/<class>/<image> + root/test/<class>/<image>: official splits (`val/` is taken in place of
  `test/` when there is no `test/`); val is carved from train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder

from edgekd.data.decoded import ImageCache
from edgekd.data.pools import DecodedFilePool, FilePool, ImagePool, Source
from edgekd.data.preprocess import Preprocess, adapt_stats
from edgekd.errors import EdgekdError

# ImageFolder images are photos in the wild: the ImageNet statistics are the usual (and a sane) default.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_split_dirs(root: Path) -> tuple[Path, Path | None]:
    """(training folder, official test folder or None)."""
    train_dir = root / "train"
    if not train_dir.is_dir():
        return root, None
    for name in ("test", "val"):
        if (root / name).is_dir():
            return train_dir, root / name
    # Only `train/`: its class folders are the whole pool (root itself would look like one class "train").
    return train_dir, None


def _read_folder(folder: Path, *, allow_empty: bool = False) -> ImageFolder:
    try:
        return ImageFolder(str(folder), allow_empty=allow_empty)
    except OSError as exc:  # no class folders, or class folders without images
        reason = " ".join(str(exc).split())
        raise EdgekdError(
            f"data.root: '{folder}' is not an image folder tree (<class>/<image> files expected): {reason}"
        ) from exc


def _test_labels(test: ImageFolder, class_to_idx: dict[str, int], test_dir: Path) -> np.ndarray:
    """Labels of the test folder in the training folder's numbering (a test folder may miss a class)."""
    unknown = sorted(set(test.classes) - set(class_to_idx))
    if unknown:
        raise EdgekdError(
            f"data.root: '{test_dir}' has class folders {unknown} that the training folder lacks "
            f"(allowed: {sorted(class_to_idx)})"
        )
    return np.asarray([class_to_idx[test.classes[t]] for t in test.targets], dtype=np.int64)


def _native_size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        width, height = image.size
    return height, width


def file_pool(paths: list[str], labels: np.ndarray, preprocess: Preprocess, cache: ImageCache) -> ImagePool:
    """The images decoded once (decoded.py), or read from their files on every load (`off`)."""
    if cache.mode == "off":
        return FilePool(paths, labels, preprocess)
    return DecodedFilePool(paths, labels, preprocess, cache)


def load_imagefolder_source(
    root: Path | None, *, image_size: int | None, channels: int | None, cache: ImageCache | None = None
) -> Source:
    """A pool per split, each file decoded once (`cache`). Without `image_size`, every image is resized to the
    first training image's size so that images of mixed sizes still batch."""
    cache = cache or ImageCache()
    if root is None:
        raise EdgekdError("data.root: dataset 'imagefolder' needs `root`, the folder of class folders")
    if not root.is_dir():
        raise EdgekdError(f"data.root: '{root}' is not a folder (allowed: a tree of <class>/<image> files)")
    train_dir, test_dir = find_split_dirs(root)
    train = _read_folder(train_dir)
    paths = [path for path, _ in train.samples]
    size = (image_size, image_size) if image_size is not None else _native_size(paths[0])
    preprocess = Preprocess(channels=channels, size=size)
    train_pool = file_pool(paths, np.asarray(train.targets, dtype=np.int64), preprocess, cache)
    test_pool = None
    if test_dir is not None:
        test = _read_folder(test_dir, allow_empty=True)
        labels = _test_labels(test, train.class_to_idx, test_dir)
        test_pool = file_pool([path for path, _ in test.samples], labels, preprocess, cache)
    out_channels = train_pool.image_shape[0]
    return Source(
        name="imagefolder",
        train_pool=train_pool,
        test_pool=test_pool,
        class_names=list(train.classes),
        mean=adapt_stats(IMAGENET_MEAN, out_channels),
        std=adapt_stats(IMAGENET_STD, out_channels),
    )
