"""The seeds module: the derivations every published figure was measured with, kept; no two purposes or
stages of a run share a seed within a run's usual bounds; and a plan's stages are seeded as the resolver says."""

from __future__ import annotations

import itertools

from edgekd.config.train import TrainConfig
from edgekd.distill.base import Distiller
from edgekd.distill.plan import Stage
from edgekd.seeds import (
    augmentation_seed,
    construction_seed,
    epoch_seed,
    seeded_rng,
    stage_seed_index,
    unlabeled_round_seed,
)
from edgekd.train.resolve import resolve_stages

RUN_SEEDS = range(100)
STAGES = range(4)
CHECKS = range(4)
EPOCHS = range(1_000)


def test_the_derivations_are_those_the_published_figures_were_measured_with():
    # Changing any of these changes every number in benchmarks/results and the README: a deliberate act.
    assert epoch_seed(3, 7) == 3 * 1_000_003 + 7
    assert epoch_seed(3, 7, stage=2) == 3 * 1_000_003 + 7 + 2 * 104_729
    assert construction_seed(3, 2) == epoch_seed(3, 999_983, 2)
    assert augmentation_seed(11, None) == augmentation_seed(11, 0) == 11
    assert augmentation_seed(11, 2) == 11 + 2 * 15_485_863
    assert unlabeled_round_seed(11, 3) == 11 + 3 * 7_777_777
    assert seeded_rng(5, 1, 2).randint(0, 2**31) == seeded_rng(5, 1, 2).randint(0, 2**31)
    assert seeded_rng(5, 1, 2).randint(0, 2**31) != seeded_rng(5, 2, 1).randint(0, 2**31)


def epoch_seeds(stage_indices) -> set[int]:
    return {epoch_seed(s, e, i) for s, i, e in itertools.product(RUN_SEEDS, stage_indices, EPOCHS)}


def test_no_two_stages_epochs_or_run_seeds_share_an_epoch_seed():
    indices = [
        *STAGES,
        *(stage_seed_index(p, branch=True, fresh_student=False, main_before=0) for p in CHECKS),
    ]
    seeds = [epoch_seed(s, e, i) for s, i, e in itertools.product(RUN_SEEDS, indices, EPOCHS)]
    assert len(set(seeds)) == len(seeds)


def test_construction_seeds_meet_no_epoch_seed():
    constructions = {construction_seed(s, i) for s in RUN_SEEDS for i in range(1, len(STAGES))}
    assert len(constructions) == len(RUN_SEEDS) * (len(STAGES) - 1)
    assert not constructions & epoch_seeds(STAGES)


def test_data_parallel_ranks_and_unlabelled_rounds_meet_no_epoch_seed():
    epochs = epoch_seeds(STAGES)
    ranks = {augmentation_seed(seed, rank) for seed in epoch_seeds([0]) for rank in range(1, 8)}
    rounds = {unlabeled_round_seed(seed, r) for seed in epoch_seeds([0]) for r in range(1, 4)}
    assert not ranks & epochs and not rounds & epochs and not ranks & rounds


def stage(
    name: str, *, branch: bool = False, fresh_student: bool = False, epochs: int | None = None
) -> Stage:
    return Stage(name, Distiller, name, epochs=epochs, branch=branch, fresh_student=fresh_student)


def test_checks_do_not_shift_the_seeds_of_the_stages_after_them():
    plain = resolve_stages([stage("a"), stage("b")], TrainConfig(), {}, ())
    checked = resolve_stages([stage("a"), stage("check", branch=True), stage("b")], TrainConfig(), {}, ())
    assert [s.seed_index for s in plain] == [0, 1]
    assert [s.seed_index for s in checked] == [0, 1_001, 1]


def test_a_stage_that_starts_over_takes_the_first_stages_seeds():
    resolved = resolve_stages([stage("search"), stage("replay", fresh_student=True)], TrainConfig(), {}, ())
    assert [s.seed_index for s in resolved] == [0, 0]


def test_a_stages_training_is_the_recipes_then_the_plans_then_distill_stages():
    base = TrainConfig(epochs=30)
    resolved = resolve_stages(
        [stage("hint", epochs=10), stage("task")],
        base,
        {"task": {"epochs": 25, "optimizer": {"lr": 0.01}}},
        (),
    )
    hint, task = resolved
    assert (hint.epochs, hint.train.optimizer.lr) == (10, base.optimizer.lr)
    assert (task.epochs, task.train.optimizer.lr, task.train.optimizer.momentum) == (25, 0.01, 0.9)
    assert hint.select == task.select == "best_val"
