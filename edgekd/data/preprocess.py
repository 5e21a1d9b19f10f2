"""Turn stored images into float tensors of the shape the model is fed, in [0, 1] and not yet normalized.

Normalization is left to the split views (see ``views.py``) because for some data sets (digits) the mean and
std are only known once the training split has been chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, the ones torchvision's rgb_to_grayscale uses, so our gray images match theirs.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 becomes float 0..1; float images are taken to be in [0, 1] already."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray → RGB repeats the plane; RGB → gray takes the luma. Works on C×H×W and N×C×H×W."""
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return torch.cat([images, images, images], dim=-3)
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype).view(3, 1, 1)
        return (images * weights).sum(dim=-3, keepdim=True)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with antialiasing (so shrinking does not alias); C×H×W or N×C×H×W."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    batch = images if images.dim() == 4 else images.unsqueeze(0)
    resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized if images.dim() == 4 else resized.squeeze(0)


@dataclass(frozen=True)
class Preprocess:
    """What every image goes through before normalization; None keeps the stored channels or size."""

    channels: int | None = None
    size: tuple[int, int] | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = to_unit_float(images)
        if self.channels is not None:
            images = convert_channels(images, self.channels)
        if self.size is not None:
            images = resize(images, self.size)
        return images

    def output_shape(self, stored: tuple[int, int, int]) -> tuple[int, int, int]:
        """C, H, W of a processed image, given C, H, W as stored."""
        channels = self.channels if self.channels is not None else stored[0]
        height, width = self.size if self.size is not None else stored[1:]
        return int(channels), int(height), int(width)


def adapt_stats(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Carry a data set's per-channel constants over to `channels` channels.

    Gray → RGB repeats the value. RGB → gray weights them like the luma; for the std this is exact only if the
    three channels were perfectly correlated, which natural images nearly are, and it avoids reading the whole
    data set just to compute one number.
    """
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1 and channels == 3:
        return (values[0],) * 3
    if len(values) == 3 and channels == 1:
        return (sum(w * v for w, v in zip(LUMA_WEIGHTS, values, strict=True)),)
    raise ValueError(f"cannot adapt {len(values)}-channel statistics to {channels} channels")
