"""Training batches that are never degenerate.

With N images and batch size B, a plain loader ends each epoch with N mod B images, which can be one: its
BatchNorm statistics come from one image and a relational loss (RKD's angles and distances) has nothing to
relate. The 'even' sampler keeps every image and the same number of steps, ceil(N / B), and spreads the
images over them evenly, so every batch holds at least half a batch (or all N images when N < B) and at most B.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def even_batch_sizes(count: int, batch_size: int) -> list[int]:
    """Sizes of ceil(count / batch_size) batches that differ by at most one image."""
    if count <= 0:
        return []
    batches = math.ceil(count / batch_size)
    base, extra = divmod(count, batches)
    return [base + 1] * extra + [base] * (batches - extra)


def smallest_batch(count: int, batch_size: int, last_batch: str) -> int:
    """The fewest images any training batch can hold under `last_batch` (the documented guarantee)."""
    if last_batch == "even":
        return min(even_batch_sizes(count, batch_size), default=0)
    if last_batch == "drop":
        return batch_size if count >= batch_size else 0
    return count % batch_size or min(count, batch_size)


def steps_per_epoch(count: int, batch_size: int, last_batch: str) -> int:
    if last_batch == "drop":
        return count // batch_size
    return math.ceil(count / batch_size)


class EvenBatchSampler(Sampler[list[int]]):
    """A shuffled epoch cut into `even_batch_sizes` batches; the order comes from `generator`."""

    def __init__(self, count: int, batch_size: int, generator: torch.Generator):
        self.count = count
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return len(even_batch_sizes(self.count, self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.count, generator=self.generator).tolist()
        start = 0
        for size in even_batch_sizes(self.count, self.batch_size):
            yield order[start : start + size]
            start += size


class ShardedBatchSampler(Sampler[list[int]]):
    """This process's share of every global batch of a data-parallel run: every `world`-th image of it,
    starting at `rank`.

    Every process draws the same global batches (the same seeded order, the same cuts), so N processes train
    on exactly the batches one process would; torch's DistributedSampler instead deals each process a strided
    slice of one shuffled epoch, padded with repeated images, whose steps mix other batches. A global batch
    smaller than `world` leaves some process without images: the recipe check refuses such batch sizes.
    """

    def __init__(self, batches: Sampler[list[int]], rank: int, world: int):
        self.batches = batches
        self.rank = rank
        self.world = world

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield list(batch)[self.rank :: self.world]


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """The batches of `make_batches(generator)` for the epoch set by :meth:`set_epoch`, each image paired with
    a seed of its own (drawn from the epoch's seed), for a DataLoader whose workers persist across epochs.

    A persistent worker's random state runs on from epoch to epoch, so augmentation drawn from it would depend
    on what the worker drew before (and a resumed run would differ from an uninterrupted one); a per-image
    seed makes each image's augmentation a function of the epoch seed and its place in the epoch alone.
    """

    def __init__(self, make_batches, shard: tuple[int, int] | None = None, salt: int = 0):
        self.make_batches = make_batches
        self.shard = shard
        self.salt = salt  # added to every epoch's seed: streams of one loader kind stay apart
        self.seed = salt

    def set_epoch(self, seed: int) -> None:
        self.seed = seed + self.salt

    def __len__(self) -> int:
        return len(self.make_batches(torch.Generator().manual_seed(self.seed)))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed)
        for batch in self.make_batches(generator):
            # seeds for the whole global batch, then this process's share: any process count, same draws
            seeds = torch.randint(0, 2**62, (len(batch),), generator=generator).tolist()
            pairs = list(zip(batch, seeds, strict=True))
            yield pairs if self.shard is None else pairs[self.shard[0] :: self.shard[1]]
