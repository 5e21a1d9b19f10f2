"""Every seed a run derives, in one place: what each number seeds, and why two of them never meet.

A run has two roots. `data.split_seed` fixes which images go where: the train/validation/test split, the
few-shot and validation draws (each class shuffled by its own NumPy RandomState, keyed by a purpose salt and
the class id; RandomState's streams are frozen by NumPy's compatibility policy, so a split is the same on
every machine). The run's seed (the recipe's `seed`, or each of `seeds`) fixes the student's initialization,
its data order and its augmentation, through torch's generators: one seed per (stage, epoch), from which the
epoch's shuffle, its augmentation and each data-parallel process's share follow. A stage that holds out part
of the training images (DistPro's search) splits them with NumPy's default_rng(run seed) (data/bundle.py).

Bit-exact resume rests on this: an epoch's randomness is a function of (run seed, stage, epoch, rank) alone,
never of what earlier epochs drew, so a run resumed at epoch k draws what the uninterrupted one drew.

The derivations are plain arithmetic with constants far apart, not `numpy.random.SeedSequence`: they are
the ones every published figure of edgekd (benchmarks/results, the README) was measured with, and a
SeedSequence would change them all. `tests/test_seeds.py` checks that no two purposes or stages share a
seed within a run's usual bounds (run seeds 0-99, plans of up to 4 stages and 4 checks, 1,000 epochs).
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------------ data.split_seed streams
# Salts that keep the random streams of the different uses of `split_seed` apart.
TEST_SALT = 1
VAL_SALT = 2
FEW_SHOT_SALT = 3
CUSTOMER_SALT = 4
VAL_DRAW_SALT = 5


def seeded_rng(seed: int, *salt: int) -> np.random.RandomState:
    """A RandomState for (seed, *salt); any Python int seed works, negative or beyond 32 bits."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, *salt]
    return np.random.RandomState(np.asarray(words, dtype=np.uint32))


def draw_rng(split_seed: int, salt: int, label: int, draw: int | None) -> np.random.RandomState:
    """The stream of one class's draw: fixed by split_seed alone (`draw` None) or also by a draw seed."""
    if draw is None:
        return seeded_rng(split_seed, salt, label)
    return seeded_rng(split_seed, salt, label, draw & 0xFFFFFFFF, (draw >> 32) & 0xFFFFFFFF)


# ------------------------------------------------------------------------------------- run-seed streams
# A run seed's block of epoch seeds (a prime).
RUN_SEED_STEP = 1_000_003
# Seeds of a plan's later stages (stage 0 keeps the seeds of a one-stage run).
STAGE_SEED_STEP = 104_729
# The epoch number whose seed initializes a later stage's objective (a fresh head, connectors): far above
# any real epoch, so it meets no epoch's seed (tests/test_seeds.py).
CONSTRUCTION_EPOCH = 999_983
# Seed indices of side branches (checks), apart from the main stages'.
BRANCH_SEED_INDEX = 1_000
# The seed index of the quantization-aware INT8 stage that follows a plan (export.int8.mode qat/qad/auto):
# apart from the plan's stages and checks.
INT8_STAGE_SEED_INDEX = 2_000
# Augmentation seeds of the processes of a data-parallel run (rank 0 keeps the one-process seed).
RANK_SEED_STEP = 15_485_863
# Seeds of successive passes over the unlabelled images within one epoch (far from any other epoch's seed).
ROUND_SEED_STEP = 7_777_777
# The unlabelled images' shuffle is seeded apart from the labelled one's: same epoch seed, another order.
UNLABELED_SEED_SALT = 7_919
# Evaluation draws nothing at random, but a DataLoader iterator always draws a base seed; a fixed generator
# keeps that draw from consuming the global RNG the trainer seeds for augmentation.
EVAL_LOADER_SEED = 0
# The paired bootstrap intervals of the report: the same resamples for every table.
BOOTSTRAP_SEED = 0


def epoch_seed(seed: int, epoch: int, stage: int = 0) -> int:
    """The seed of one epoch of one stage: its shuffle, and (through `augmentation_seed`) its augmentation."""
    return seed * RUN_SEED_STEP + epoch + stage * STAGE_SEED_STEP


def construction_seed(seed: int, stage: int) -> int:
    """The seed that builds stage `stage`'s objective (stage 0 is built from the model's own seeding)."""
    return epoch_seed(seed, CONSTRUCTION_EPOCH, stage)


def augmentation_seed(epoch_seed_: int, rank: int | None) -> int:
    """The global RNG's seed for an epoch's augmentation: the processes of a data-parallel run share the
    data order but not their augmentation draws; one process (rank None or 0) keeps the epoch seed."""
    return epoch_seed_ + (rank or 0) * RANK_SEED_STEP


def unlabeled_round_seed(epoch_seed_: int, round_: int) -> int:
    """The seed of the `round_`-th pass over the unlabelled images within one epoch."""
    return epoch_seed_ + ROUND_SEED_STEP * round_


def stage_seed_index(position: int, *, branch: bool, fresh_student: bool, main_before: int) -> int:
    """The index that seeds a stage of a plan: its place among the plan's main stages (`main_before` of them
    precede it), so turning a check on leaves the seeds of the stages after it, hence the student, unchanged;
    a check (`branch`) gets one of its own; a stage that starts over (`fresh_student`) takes the first stage's,
    so a DistPro replay sees the data order and augmentation its reference without a search sees."""
    if branch:
        return BRANCH_SEED_INDEX + position
    if fresh_student:
        return 0
    return main_before
