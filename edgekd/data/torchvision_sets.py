"""CIFAR-10, CIFAR-100, MNIST and FashionMNIST read from a local folder with torchvision.

These sets are small enough to live in memory, so each split is read once into a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets

from edgekd.data.pools import InMemoryPool, Source
from edgekd.data.preprocess import Preprocess, adapt_stats
from edgekd.errors import EdgekdError


@dataclass(frozen=True)
class TorchvisionSet:
    title: str
    dataset_class: type
    folder: str  # where torchvision looks for the files, relative to `root`
    # Published per-channel statistics of the training split, in [0, 1] units.
    mean: tuple[float, ...]
    std: tuple[float, ...]


TORCHVISION_SETS = {
    "cifar10": TorchvisionSet(
        "CIFAR-10",
        datasets.CIFAR10,
        "cifar-10-batches-py",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": TorchvisionSet(
        "CIFAR-100", datasets.CIFAR100, "cifar-100-python", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "mnist": TorchvisionSet("MNIST", datasets.MNIST, "MNIST/raw", (0.1307,), (0.3081,)),
    "fashionmnist": TorchvisionSet(
        "FashionMNIST", datasets.FashionMNIST, "FashionMNIST/raw", (0.2860,), (0.3530,)
    ),
}


def _open(spec: TorchvisionSet, root: Path, *, train: bool, download: bool) -> Any:
    """The torchvision data set object, with its failures turned into one-line user errors."""
    try:
        return spec.dataset_class(str(root), train=train, download=download)
    except (RuntimeError, OSError) as exc:  # torchvision: "Dataset not found or corrupted"; urllib: OSError
        if download:
            reason = " ".join(str(exc).split())
            raise EdgekdError(
                f"data.download: could not fetch {spec.title} into data.root '{root}': {reason}"
            ) from exc
        raise EdgekdError(
            f"data.root: no {spec.title} found in '{root}' (torchvision looks for '{root / spec.folder}'); "
            f"set `download: true` to fetch it"
        ) from exc


def _as_nchw(data: Any) -> torch.Tensor:
    """CIFAR stores N×H×W×3 numpy arrays, MNIST N×H×W tensors; both become uint8 N×C×H×W."""
    images = torch.as_tensor(np.asarray(data))
    if images.dim() == 3:
        return images.unsqueeze(1)
    return images.permute(0, 3, 1, 2).contiguous()


def _pool(dataset: Any, preprocess: Preprocess) -> InMemoryPool:
    return InMemoryPool(_as_nchw(dataset.data), np.asarray(dataset.targets, dtype=np.int64), preprocess)


def load_torchvision_source(
    name: str, root: Path | None, *, download: bool, preprocess: Preprocess
) -> Source:
    """Both official splits of a torchvision data set; normalization uses its published constants."""
    spec = TORCHVISION_SETS[name]
    if root is None:
        raise EdgekdError(f"data.root: dataset '{name}' needs `root`, the local folder holding {spec.title}")
    train = _open(spec, root, train=True, download=download)
    test = _open(spec, root, train=False, download=download)
    train_pool = _pool(train, preprocess)
    channels = train_pool.image_shape[0]
    return Source(
        name=name,
        train_pool=train_pool,
        test_pool=_pool(test, preprocess),
        class_names=[str(c) for c in train.classes],
        mean=adapt_stats(spec.mean, channels),
        std=adapt_stats(spec.std, channels),
    )
