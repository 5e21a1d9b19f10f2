"""Image pools: all images of one stored split (a training pool, maybe an official test pool) with labels.

A pool hands out processed images by index; splits and subsets are index arrays into a pool (see
``views.py``), so the teacher's and the student's views of the same data share one pool and one split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from edgekd.data.decoded import ImageCache, decode_all
from edgekd.data.preprocess import Preprocess

# Processed in-memory pools up to this size are kept as ready float tensors (fast epochs); larger ones, e.g.
# MNIST blown up to 224x224 RGB, keep the stored uint8 images and process each batch as it is loaded.
CACHE_LIMIT_BYTES = 1 << 30
_CHUNK = 4096  # images processed at once while filling the cache, to bound peak memory


class ImagePool:
    """Interface: `labels` (int64 array), `image_shape` (C, H, W after processing), `load(indices)`."""

    labels: np.ndarray
    image_shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Processed images N×C×H×W, float in [0, 1]."""
        raise NotImplementedError


class InMemoryPool(ImagePool):
    """Images already in memory as an N×C×H×W tensor (uint8 0..255 or float 0..1)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        preprocess: Preprocess,
        cache_limit_bytes: int = CACHE_LIMIT_BYTES,
    ):
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"expected N×C×H×W images and N labels: {tuple(images.shape)}, {len(labels)}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.preprocess = preprocess
        self.image_shape = preprocess.output_shape(tuple(images.shape[1:]))
        ready_bytes = len(images) * int(np.prod(self.image_shape)) * 4
        self._ready: torch.Tensor | None = None
        self._stored: torch.Tensor | None = None
        if ready_bytes <= cache_limit_bytes:
            self._ready = self._process_all(images)
        else:
            self._stored = images

    def _process_all(self, images: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            return torch.empty(0, *self.image_shape)
        return torch.cat([self.preprocess(part) for part in images.split(_CHUNK)])

    def load(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if self._ready is not None:
            return self._ready[index]
        assert self._stored is not None
        return self.preprocess(self._stored[index])


def read_rgb(path: str) -> torch.Tensor:
    """An image file as a uint8 3×H×W tensor (RGB, like torchvision's ImageFolder loader)."""
    with Image.open(path) as image:
        return pil_to_tensor(image.convert("RGB"))


class FilePool(ImagePool):
    """Images read from files on every load (ImageFolder): data sets too big to hold in memory."""

    def __init__(self, paths: list[str], labels: np.ndarray, preprocess: Preprocess, channels: int = 3):
        if preprocess.size is None:
            raise ValueError("a FilePool needs a fixed output size: files may differ in size")
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.preprocess = preprocess
        self.image_shape = preprocess.output_shape((channels, *preprocess.size))

    def load(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        images = [self.preprocess(read_rgb(self.paths[int(i)])) for i in indices]
        return torch.stack(images) if images else torch.empty(0, *self.image_shape)


class DecodedFilePool(ImagePool):
    """Image files decoded once when the pool opens (decoded.py: in memory or a disk cache), then served as
    uint8 tensors: what every epoch, the teacher and every student of the run read."""

    def __init__(
        self,
        paths: list[str],
        labels: np.ndarray,
        preprocess: Preprocess,
        cache: ImageCache,
        channels: int = 3,
    ):
        if preprocess.size is None:
            raise ValueError("a DecodedFilePool needs a fixed output size: files may differ in size")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_shape = preprocess.output_shape((channels, *preprocess.size))
        self.images, self.decode_count = decode_all(paths, preprocess, self.image_shape, cache, read_rgb)

    def load(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        rows = np.asarray(indices, dtype=np.int64)
        if len(rows) == 0:
            return torch.empty(0, *self.image_shape)
        return torch.from_numpy(np.ascontiguousarray(self.images[rows])).float().div_(255.0)


@dataclass(frozen=True)
class Source:
    """A data set as read from disk, before any split."""

    name: str
    train_pool: ImagePool
    test_pool: ImagePool | None  # the official test split, when the data set has one
    class_names: list[str]
    # Per-channel normalization constants of the processed images; None: compute them from the training split.
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
