"""Training augmentation, applied per sample to normalized C×H×W tensors.

Randomness comes from torch's global RNG, so the trainer's per-epoch `torch.manual_seed` makes an epoch's
augmentation reproducible (and each DataLoader worker gets its own seed derived from the loader's generator);
with persistent workers (`data.persistent_workers`) every sample brings its own seed instead (a generator),
so its augmentation does not depend on which worker drew it or what that worker drew before.
Evaluation uses no augmentation at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "crop", "crop_flip", "resized_crop_flip")
# ImageNet-style random-resized crop: a region of 8-100 % of the image, aspect ratio 3/4-4/3 (log-uniform)
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
RESIZED_CROP_TRIES = 10


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


@dataclass(frozen=True)
class RandomResizedCropFlip:
    """The ImageNet training augmentation for large images (SRM's CUB at 224², most torchvision teachers): a
    random region of RESIZED_CROP_SCALE of the area at an aspect ratio in RESIZED_CROP_RATIO, resized back to
    the image's size (bilinear, antialiased), mirrored half the time. As torchvision's RandomResizedCrop:
    ten tries for a region that fits, then the largest central one of an allowed ratio."""

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _, height, width = image.shape
        top, left, crop_height, crop_width = resized_crop_box(height, width, generator)
        region = image[:, top : top + crop_height, left : left + crop_width]
        resized = F.interpolate(
            region.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )[0]
        if bool(torch.rand((), generator=generator) < 0.5):
            resized = resized.flip(-1)
        return resized


def resized_crop_box(height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random-resized crop of a height x width image."""
    area = height * width
    log_ratios = (math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1]))
    for _ in range(RESIZED_CROP_TRIES):
        draws = torch.rand(2, generator=generator).tolist()
        target = area * (RESIZED_CROP_SCALE[0] + draws[0] * (RESIZED_CROP_SCALE[1] - RESIZED_CROP_SCALE[0]))
        ratio = math.exp(log_ratios[0] + draws[1] * (log_ratios[1] - log_ratios[0]))
        crop_width = round(math.sqrt(target * ratio))
        crop_height = round(math.sqrt(target / ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (), generator=generator))
            left = int(torch.randint(0, width - crop_width + 1, (), generator=generator))
            return top, left, crop_height, crop_width
    # the fallback: the whole image cut to the nearest allowed aspect ratio, centred
    ratio = min(max(width / height, RESIZED_CROP_RATIO[0]), RESIZED_CROP_RATIO[1])
    if width / height < ratio:
        crop_width, crop_height = width, min(height, round(width / ratio))
    else:
        crop_width, crop_height = min(width, round(height * ratio)), height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def make_augmentation(kind: str) -> RandomCropFlip | RandomResizedCropFlip | None:
    """The per-sample training transform for `data.augment`, or None for 'none'."""
    if kind == "none":
        return None
    if kind == "crop":
        return RandomCropFlip(flip=False)
    if kind == "crop_flip":
        return RandomCropFlip(flip=True)
    if kind == "resized_crop_flip":
        return RandomResizedCropFlip()
    raise ValueError(f"unknown augmentation {kind!r} (allowed: {', '.join(AUGMENTATIONS)})")
