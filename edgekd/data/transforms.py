"""Training augmentation, applied per sample to normalized C×H×W tensors.

Randomness comes from torch's global RNG, so the trainer's per-epoch `torch.manual_seed` makes an epoch's
augmentation reproducible (and each DataLoader worker gets its own seed derived from the loader's generator);
with persistent workers (`data.persistent_workers`) every sample brings its own seed instead (a generator),
so its augmentation does not depend on which worker drew it or what that worker drew before.
Evaluation uses no augmentation at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "crop", "crop_flip")


def crop_padding(height: int, width: int) -> int:
    """The classic CIFAR recipe pads 4 pixels on 32: an eighth of the size, at least one pixel."""
    return max(1, min(height, width) // 8)


@dataclass(frozen=True)
class RandomCropFlip:
    """Pad, crop back to the original size at a random offset, and (with `flip`) mirror half the images.

    A class rather than a closure so DataLoader workers can pickle it.
    """

    flip: bool = False

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _, height, width = image.shape
        pad = crop_padding(height, width)
        # Zero padding of a normalized image is the data set's mean colour: a neutral border.
        padded = F.pad(image, (pad, pad, pad, pad))
        top = int(torch.randint(0, 2 * pad + 1, (), generator=generator))
        left = int(torch.randint(0, 2 * pad + 1, (), generator=generator))
        cropped = padded[:, top : top + height, left : left + width]
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            cropped = cropped.flip(-1)
        return cropped


def make_augmentation(kind: str) -> RandomCropFlip | None:
    """The per-sample training transform for `data.augment`, or None for 'none'."""
    if kind == "none":
        return None
    if kind == "crop":
        return RandomCropFlip(flip=False)
    if kind == "crop_flip":
        return RandomCropFlip(flip=True)
    raise ValueError(f"unknown augmentation {kind!r} (allowed: {', '.join(AUGMENTATIONS)})")
