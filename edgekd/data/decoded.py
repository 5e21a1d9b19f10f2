"""Image files decoded once per run (or once per machine, with the disk cache), not once per epoch.

An ImageFolder of PNG or JPEG files costs a decode, a colour conversion and a resize per image per epoch,
which starved the training step (about 7 images/s against 24 from memory, 2 cores). Here every file is
decoded once, to the size and channels the model is fed, and kept as uint8 (a quarter of float32's bytes):

* in memory, when the decoded images take at most ``MEMORY_FRACTION`` of the machine's available memory
  (``data.image_cache: auto``, the default) or always (``memory``);
* on disk otherwise (``auto``) or always (``disk``): a ``.npy`` file read through a memory map, so data-loader
  workers and later runs (the teacher's build, each student's, a sweep) share the pages. Each file is keyed by
  its path, size and modification time: a changed or replaced image is decoded again, the others are not.
* ``off`` keeps the old behaviour: read and decode every image on every load.

Decoding goes through the pool's Preprocess in float (channels, antialiased resize), then rounds to uint8;
augmentation and normalization run on the decoded tensors, as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from edgekd.data.preprocess import Preprocess

CacheMode = Literal["auto", "memory", "disk", "off"]
MEMORY_FRACTION = 0.25
CACHE_FORMAT = 1


@dataclass(frozen=True)
class ImageCache:
    mode: CacheMode = "auto"
    folder: Path | None = None  # where the disk cache lives; None: default_cache_folder()


def default_cache_folder() -> Path:
    """$XDG_CACHE_HOME/edgekd/images, else ~/.cache/edgekd/images: one per user, shared by every run."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgekd" / "images"


@dataclass
class DecodeCount:
    """What opening the pool cost: files decoded now, and files whose decode was read from the disk cache."""

    decoded: int = 0
    from_cache: int = 0
    where: str = "memory"  # memory | disk | off

    def to_dict(self) -> dict[str, int | str]:
        return {"decoded": self.decoded, "from_cache": self.from_cache, "kept": self.where}


def file_key(path: str) -> list[int | str]:
    stat = os.stat(path)
    return [path, stat.st_size, stat.st_mtime_ns]


# Files decoded by this process so far: what "once per run" is checked against (tests, benchmarks).
files_decoded = 0


def decode_file(path: str, preprocess: Preprocess, read: Callable[[str], torch.Tensor]) -> np.ndarray:
    """One image as the model's input size and channels, uint8 C×H×W."""
    global files_decoded
    files_decoded += 1
    image = preprocess(read(path))
    return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def decode_all(
    paths: Sequence[str],
    preprocess: Preprocess,
    shape: tuple[int, int, int],
    cache: ImageCache,
    read: Callable[[str], torch.Tensor],
) -> tuple[np.ndarray, DecodeCount]:
    """Every file decoded once: an N×C×H×W uint8 array (in memory, or a read-only memory map)."""
    nbytes = len(paths) * int(np.prod(shape))
    if cache.mode == "memory" or (cache.mode == "auto" and nbytes <= MEMORY_FRACTION * _available_bytes()):
        images = np.empty((len(paths), *shape), dtype=np.uint8)
        for row, path in enumerate(paths):
            images[row] = decode_file(path, preprocess, read)
        return images, DecodeCount(decoded=len(paths), where="memory")
    folder = cache.folder or default_cache_folder()
    return _disk_cache(list(paths), preprocess, shape, folder, read)


def _disk_cache(
    paths: list[str],
    preprocess: Preprocess,
    shape: tuple[int, int, int],
    folder: Path,
    read: Callable[[str], torch.Tensor],
) -> tuple[np.ndarray, DecodeCount]:
    folder.mkdir(parents=True, exist_ok=True)
    name = _cache_name(paths, preprocess, shape)
    array_path, index_path = folder / f"{name}.npy", folder / f"{name}.json"
    keys = [file_key(path) for path in paths]
    stored = _stored_keys(index_path, array_path, len(paths), shape)
    count = DecodeCount(where="disk")
    if stored is None:  # a new cache: written beside its place, then renamed (a crash leaves no half file)
        tmp = array_path.with_name(f".{array_path.name}.tmp-{os.getpid()}")
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))
        stale = range(len(paths))
    else:
        images = np.load(array_path, mmap_mode="r+")
        stale = [row for row, key in enumerate(keys) if stored[row] != key]
    for row in stale:
        images[row] = decode_file(paths[row], preprocess, read)
    count.decoded, count.from_cache = len(stale), len(paths) - len(stale)
    images.flush()
    del images
    if stored is None:
        os.replace(tmp, array_path)
    if stored is None or stale:
        _write_index(index_path, keys, shape)
    return np.load(array_path, mmap_mode="r"), count


def _cache_name(paths: list[str], preprocess: Preprocess, shape: tuple[int, int, int]) -> str:
    """The same files in the same order, decoded the same way, share one cache file."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, list(shape), preprocess.channels, paths]).encode())
    return digest.hexdigest()[:32]


def _stored_keys(index_path: Path, array_path: Path, count: int, shape: tuple[int, ...]) -> list | None:
    """The (path, size, mtime) of each row of a cache that matches this pool; None for none or a bad one."""
    try:
        index = json.loads(index_path.read_text())
        header_shape = np.load(array_path, mmap_mode="r").shape
    except (OSError, ValueError):
        return None
    keys = index.get("files") if isinstance(index, dict) else None
    if (
        index.get("format") != CACHE_FORMAT
        or tuple(header_shape) != (count, *shape)
        or not isinstance(keys, list)
        or len(keys) != count
    ):
        return None
    return keys


def _write_index(index_path: Path, keys: list, shape: tuple[int, ...]) -> None:
    from edgekd.fileio import write_json

    write_json(index_path, {"format": CACHE_FORMAT, "shape": list(shape), "files": keys})


def _available_bytes() -> int:
    from edgekd.bench.environment import available_memory_bytes

    return available_memory_bytes()[0]
