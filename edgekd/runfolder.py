"""Opening a run folder: a new one, one to continue (`--resume`: the same recipe, the same layout) or one
to start over (`--force`)."""

from __future__ import annotations

import copy
import shutil
from typing import Any

import yaml

from edgekd.errors import EdgekdError
from edgekd.fileio import read_json, write_json, write_text
from edgekd.layout import LAYOUT_VERSION, RunLayout
from edgekd.recipe import Recipe, dump_recipe


def open_run_dir(recipe: Recipe, *, resume: bool, force: bool) -> RunLayout:
    run_dir = recipe.run_dir
    layout = RunLayout(run_dir)
    if check_run_dir(recipe, resume=resume, force=force) and force:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(layout.recipe, dump_recipe(recipe))
    write_json(layout.layout, {"layout": LAYOUT_VERSION})
    return layout


def check_run_dir(recipe: Recipe, *, resume: bool, force: bool) -> bool:
    """Whether the run folder already holds a run, refusing (without writing anything) one that neither
    --resume can continue nor --force may replace."""
    run_dir = recipe.run_dir
    if not (run_dir.exists() and any(run_dir.iterdir())):
        return False
    if resume:
        layout = RunLayout(run_dir)
        _check_same_recipe(layout, recipe)
        _check_layout(layout)
    elif not force:
        raise EdgekdError(
            f"output: run folder '{run_dir}' already holds a run (use --resume to continue it, "
            "--force to start over, or --set name=... for a new one)"
        )
    return True


def _check_layout(layout: RunLayout) -> None:
    """A folder of an older layout (before methods had stages: train/<method>/last.pt) cannot resume."""
    stored = read_json(layout.layout) if layout.layout.is_file() else {}
    if stored.get("layout") != LAYOUT_VERSION:
        raise EdgekdError(
            f"--resume: '{layout.root}' was written by an older edgekd, before methods had stages "
            "(train/<method>/<stage>/); start it over with --force"
        )


def _check_same_recipe(layout: RunLayout, recipe: Recipe) -> None:
    stored_file, run_dir = layout.recipe, layout.root
    if not stored_file.is_file():
        raise EdgekdError(
            f"--resume: '{run_dir}' has no {stored_file.name}, so it is not an edgekd run folder"
        )
    stored = with_current_defaults(yaml.safe_load(stored_file.read_text()))
    current = recipe.model_dump(mode="json")
    changed = _changed_fields(stored, current)
    if changed:
        raise EdgekdError(
            f"--resume: the recipe differs from the one that started '{run_dir}' in {', '.join(changed[:5])} "
            "(use --force to start over)"
        )


# Fields added after a run folder may have been written whose default is not what the older edgekd did: a
# stored recipe without them ran with these values (a resume with today's defaults must not mix the two).
LEGACY_BEHAVIOUR = {
    ("data", "last_batch"): "keep",
    ("data", "draws"): "fixed",
    ("distill", "finetune", "head"): "restricted",
    ("distill", "finetune", "trainable"): "all",
}


def with_current_defaults(stored: Any) -> Any:
    """The stored recipe with the fields this version added filled in, so a run started by an older edgekd
    still resumes: with what that version did (LEGACY_BEHAVIOUR) where today's default differs, else with
    the default. Kept as written when this version cannot read it (then it differs)."""
    if isinstance(stored, dict):
        stored = copy.deepcopy(stored)  # a copy to fill in
        for path, value in LEGACY_BEHAVIOUR.items():
            *parents, leaf = path
            node = stored
            for key in parents:
                node = node.setdefault(key, {}) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf not in node:
                node[leaf] = value
    try:
        return Recipe.model_validate(stored).model_dump(mode="json")
    except ValueError:
        return stored


def _changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            changed += _changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return changed
    return [] if old == new else [prefix.rstrip(".")]
