"""Split views: the Dataset objects a DataBundle hands out.

A view is an index array into a pool plus what to do on the way out: normalize, augment, relabel. Labels are
known without loading any image (`view.labels`), and batches are loaded in one call (`__getitems__`, which
torch's DataLoader uses when present) so in-memory data sets cost one tensor gather per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from edgekd.data.pools import ImagePool

_STATS_CHUNK = 2048
_STATS_CHUNK_BYTES = 256 << 20  # float64 images summed at once: bounded, whatever the image size


class SplitView(Dataset):
    """Items are (normalized float C×H×W tensor, int label)."""

    def __init__(
        self,
        pool: ImagePool,
        indices: np.ndarray,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        label_lookup: np.ndarray | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.pool = pool
        self.indices = np.asarray(indices, dtype=np.int64)  # positions in `pool`
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.label_lookup = label_lookup
        self.augment = augment
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        """The label of every item, after relabelling."""
        return self._relabel(self.pool.labels[self.indices])

    def _relabel(self, original: np.ndarray) -> np.ndarray:
        return original if self.label_lookup is None else self.label_lookup[original]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([position])[0]

    def __getitems__(
        self, positions: Sequence[int] | Sequence[tuple[int, int]]
    ) -> list[tuple[torch.Tensor, int]]:
        """Items at `positions`; (position, seed) pairs (SeededBatches) seed each item's augmentation."""
        seeds = [seed for _, seed in positions] if positions and isinstance(positions[0], tuple) else None
        if seeds is not None:
            positions = [position for position, _ in positions]
        pool_indices = self.indices[np.asarray(positions, dtype=np.int64)]
        images = (self.pool.load(pool_indices) - self._mean) / self._std
        labels = self._relabel(self.pool.labels[pool_indices])
        items = []
        for slot, (image, label) in enumerate(zip(images, labels, strict=True)):
            items.append((self._augmented(image, None if seeds is None else seeds[slot]), int(label)))
        return items

    def _augmented(self, image: torch.Tensor, seed: int | None) -> torch.Tensor:
        if self.augment is None:
            return image
        if seed is None:
            return self.augment(image)
        return self.augment(image, torch.Generator().manual_seed(seed))

    def part(self, positions: np.ndarray, *, augment: bool = True) -> SplitView:
        """The items at `positions` (of this view) as a view of their own, with or without this view's
        augmentation."""
        return SplitView(
            self.pool,
            self.indices[np.asarray(positions, dtype=np.int64)],
            mean=self.mean,
            std=self.std,
            label_lookup=self.label_lookup,
            augment=self.augment if augment else None,
        )

    def without_augmentation(self) -> SplitView:
        """The same images, as evaluation sees them."""
        return SplitView(
            self.pool, self.indices, mean=self.mean, std=self.std, label_lookup=self.label_lookup
        )


class ImagesOnly(Dataset):
    """A view's images without their labels: a transfer set for label-free distillation terms.

    Dropping the labels here, not in the trainer, means no method can use them by mistake.
    """

    def __init__(self, view: SplitView):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.view.__getitems__([position])[0][0]

    def __getitems__(self, positions: Sequence[int] | Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        return [image for image, _ in self.view.__getitems__(positions)]


def channel_stats(pool: ImagePool, indices: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of the processed images at `indices`, summed in float64."""
    channels = pool.image_shape[0]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    # Chunks of 2048 images as before (the float64 sums, hence the statistics, stay bit-identical), fewer
    # when the images are large.
    per_chunk = max(1, min(_STATS_CHUNK, _STATS_CHUNK_BYTES // (int(np.prod(pool.image_shape)) * 8)))
    for start in range(0, len(indices), per_chunk):
        images = pool.load(indices[start : start + per_chunk]).double()
        total += images.sum(dim=(0, 2, 3))
        total_sq += (images * images).sum(dim=(0, 2, 3))
        count += images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / max(count, 1)
    variance = (total_sq / max(count, 1) - mean * mean).clamp_min(0.0)
    # A constant channel would divide by zero; 1.0 leaves it centred and unscaled.
    std = torch.where(variance > 0, variance.sqrt(), torch.ones_like(variance))
    return tuple(mean.tolist()), tuple(std.tolist())
