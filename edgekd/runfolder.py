"""Opening a run folder: a new one, one to continue (`--resume`: the same recipe, the same layout) or one
to start over (`--force`).

edgekd writes a marker file (`.edgekd-run`) into every run folder it creates, before anything else, and
deletes (or writes into) an existing folder only when the marker is there: a folder of the user's that
happens to sit at `output_dir/name` is refused, never emptied. A run folder that is a symbolic link is
refused too (edgekd never deletes or writes through a link: the target may be anything).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from edgekd.config.loading import dump_recipe
from edgekd.errors import EdgekdError
from edgekd.fileio import read_json, write_json, write_text
from edgekd.layout import LAYOUT_VERSION, RunLayout
from edgekd.recipe import Recipe
from edgekd.runlock import refuse_if_busy


def open_run_dir(recipe: Recipe, *, resume: bool, force: bool) -> RunLayout:
    run_dir = recipe.run_dir
    layout = RunLayout(run_dir)
    if holds_run(recipe, resume=resume, force=force) and force:  # under the lock
        delete_owned_folder(run_dir)  # it carries edgekd's marker
    run_dir.mkdir(parents=True, exist_ok=True)
    if not layout.marker.is_file():
        write_json(layout.marker, {"edgekd": "run folder", "name": recipe.name, "created": _now()})
    write_text(layout.recipe, dump_recipe(recipe))
    write_json(layout.layout, {"layout": LAYOUT_VERSION})
    return layout


def check_run_folder(run_dir: Path, *, resume: bool = False, force: bool = False) -> str:
    """What sits at `run_dir`: "new" (nothing, or an empty folder) or "holds a run" (a folder edgekd created,
    to resume or, with --force, to delete); anything else is refused (EdgekdError, one line). Writes nothing,
    so `validate` and the --nproc launcher can call it before any process starts."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise EdgekdError(
            f"output: run folder '{run_dir}' is a symbolic link (to '{os.readlink(run_dir)}'); edgekd never "
            "writes or deletes through a link: point output_dir at the real folder instead"
        )
    if not run_dir.exists():
        return "new"
    if not run_dir.is_dir():
        raise EdgekdError(f"output: '{run_dir}' is a file; allowed: a folder (created when missing)")
    try:
        empty = not any(run_dir.iterdir())
    except OSError as error:
        raise EdgekdError(f"output: run folder '{run_dir}' cannot be read ({error.strerror})") from None
    if empty:
        return "new"
    if not is_run_folder(run_dir):
        raise EdgekdError(
            f"output: '{run_dir}' already exists and was not created by edgekd (no {RunLayout.MARKER} file "
            "in it); edgekd neither writes into nor deletes such a folder: choose another name (--set name=...) "
            "or output_dir"
        )
    if not (resume or force):
        raise EdgekdError(
            f"output: run folder '{run_dir}' already holds a run (use --resume to continue it, "
            "--force to start over, or --set name=... for a new one)"
        )
    return "holds a run"


def check_run_dir(recipe: Recipe, *, resume: bool, force: bool) -> bool:
    """Before taking the run folder's lock: refuse a folder another build holds (naming it), then as
    `holds_run` does. Writes nothing."""
    refuse_if_busy(recipe.run_dir)
    return holds_run(recipe, resume=resume, force=force)


def holds_run(recipe: Recipe, *, resume: bool, force: bool) -> bool:
    """Whether the recipe's run folder already holds a run, refusing (without writing anything) one that
    neither --resume can continue (another recipe, an older layout) nor --force may replace (not edgekd's)."""
    if check_run_folder(recipe.run_dir, resume=resume, force=force) == "new":
        return False
    if resume:
        layout = RunLayout(recipe.run_dir)
        _check_same_recipe(layout, recipe)
        _check_layout(layout)
    return True


def refuse_foreign_folder(run_dir: Path) -> None:
    """`validate`: the run folder may be new or an edgekd run (to resume or start over), nothing else."""
    check_run_folder(run_dir, resume=True)


def is_run_folder(path: Path) -> bool:
    """A real folder (not a link) holding edgekd's marker as a regular file (or, written before the marker
    existed, edgekd's layout.json: exactly {"layout": <version>})."""
    layout = RunLayout(path)
    if path.is_symlink():
        return False
    if _json_file(layout.marker).get("edgekd") == "run folder":
        return True
    stored = _json_file(layout.layout)
    return set(stored) == {"layout"} and type(stored["layout"]) is int


def _json_file(path: Path) -> dict[str, Any]:
    """A small JSON object file edgekd wrote; {} for anything else (a link, a folder, other content)."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def delete_owned_folder(path: Path) -> None:
    """Delete a folder inside a run folder edgekd created (or that run folder itself, once its marker was
    checked). A symbolic link is removed as a link: its target is never touched (shutil.rmtree does not
    follow links inside the tree either)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


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
    changed = recipe_changes(layout, recipe)
    if changed:
        raise EdgekdError(
            f"--resume: the recipe differs from the one that started '{run_dir}' in {', '.join(changed[:5])} "
            "(use --force to start over)"
        )


def recipe_changes(layout: RunLayout, recipe: Recipe) -> list[str]:
    """The fields in which `recipe` differs from the one stored in the run folder (its recipe.yaml, read
    with today's defaults); ['recipe.yaml'] when the folder holds none."""
    if not layout.recipe.is_file():
        return [layout.recipe.name]
    try:
        stored = yaml.safe_load(layout.recipe.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return [f"{layout.recipe.name} (unreadable)"]
    return _changed_fields(with_current_defaults(stored), comparable(recipe))


# Fields added after a run folder may have been written whose default is not what the older edgekd did: a
# stored recipe without them ran with these values (a resume with today's defaults must not mix the two).
LEGACY_BEHAVIOUR = {
    ("data", "last_batch"): "keep",
    ("data", "draws"): "fixed",
    # before data.normalize: the data set's published values (ImageNet's for an ImageFolder)
    ("data", "normalize"): "dataset",
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
        return comparable(Recipe.model_validate(stored))
    except ValueError:
        return stored


def comparable(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a run depends on it: data.normalize as resolved (its `auto` and the value it stands for
    are the same run)."""
    dumped = recipe.model_dump(mode="json")
    normalization = recipe.normalization
    dumped["data"]["normalize"] = (
        normalization if isinstance(normalization, str) else normalization.model_dump()
    )
    return dumped


def _changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            changed += _changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return changed
    return [] if old == new else [prefix.rstrip(".")]
