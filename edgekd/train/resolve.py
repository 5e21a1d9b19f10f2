"""One place that resolves a stage of a method's plan as a build runs it: its training section (the recipe's
`train:`, the plan's split of the epochs, selection and schedule, then `distill.stages`' changes), its
selection rule, the index that seeds it, and whether it is skipped (its artifacts loaded from another run).

The build (stages.run_plan), `edgekd validate`'s budget lines (planned_epochs) and the data-parallel check
(prepare) all read a stage through here, so what is printed before a build is what the build trains.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from edgekd.config.train import TrainConfig, stage_train_config
from edgekd.distill.plan import Selection, Stage, skipped
from edgekd.distill.registry import resolve_method
from edgekd.recipe import Recipe
from edgekd.seeds import stage_seed_index


@dataclass(frozen=True)
class ResolvedStage:
    """A stage of a plan with everything the build reads about it resolved."""

    stage: Stage
    position: int  # its place in the plan
    train: TrainConfig  # what its Trainer trains with
    select: Selection  # how its Trainer keeps an epoch
    seed_index: int  # seeds.stage_seed_index: what seeds its epochs and the construction of its objective
    skipped: bool  # its artifacts are loaded from another run (distill.artifacts): it does not train

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def epochs(self) -> int:
        return self.train.epochs


def resolve_stages(
    stages: list[Stage],
    train: TrainConfig,
    changes: Mapping[str, dict[str, Any]],
    loaded: Collection[str],
) -> list[ResolvedStage]:
    """`stages` (a method's plan) resolved against the recipe's training section, the method's per-stage
    changes (`distill.stages.<method>`) and the names of the artifacts it loads (`distill.artifacts`)."""
    resolved: list[ResolvedStage] = []
    main_before = 0
    for position, stage in enumerate(stages):
        resolved.append(
            ResolvedStage(
                stage=stage,
                position=position,
                train=stage_train_config(stage.train_config(train), changes.get(stage.name)),
                select=stage.selection(train),
                seed_index=stage_seed_index(
                    position, branch=stage.branch, fresh_student=stage.fresh_student, main_before=main_before
                ),
                skipped=skipped(stage, position, len(stages), loaded),
            )
        )
        main_before += not stage.branch
    return resolved


def method_plan(recipe: Recipe, method: str) -> list[Stage]:
    """The plan of `method` (or variant): its stages, given its options and the recipe's training section."""
    resolved = resolve_method(recipe.distill, method)
    return resolved.entry.plan(resolved.options, recipe.train)


def method_stages(recipe: Recipe, method: str) -> list[ResolvedStage]:
    """The plan of `method` (or variant) as a build of `recipe` runs it."""
    return resolve_stages(
        method_plan(recipe, method),
        recipe.train,
        recipe.distill.stages.get(method, {}),
        recipe.distill.artifacts.get(method, {}),
    )
