"""Reading a recipe: YAML (safe, no object tags), `--set` overrides, validation into a `Recipe`, and the
resolved recipe written back as YAML or as a JSON schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgekd.config.errors import describe_validation_error
from edgekd.errors import RecipeError
from edgekd.recipe import Recipe
from edgekd.safe_yaml import YamlRefused, load_yaml_text, read_yaml_file


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; any problem is a RecipeError naming the field."""
    raw = read_recipe_yaml(Path(path))
    for override in overrides:
        apply_override(raw, override)
    return validate_recipe(raw, source=str(path))


def read_recipe_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError("", f"recipe file '{path}' does not exist")
    try:
        raw = read_yaml_file(path)
    except YamlRefused as exc:
        raise RecipeError("", f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise RecipeError("", f"{path}: not valid YAML{line} ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        raise RecipeError("", f"{path}: the recipe is empty; allowed: a mapping of sections (see recipes/)")
    if not isinstance(raw, dict):
        raise RecipeError("", f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is read as YAML (so 0.1, [1, 2], null work)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError("--set", f"'{override}' is not of the form section.field=value")
    try:
        value = load_yaml_text(text)
    except YamlRefused as exc:
        raise RecipeError(key.strip(), f"--set value refused: {exc}") from None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(key, f"cannot set a field inside '{part}', which holds {child!r}")
        node = child
    node[parts[-1]] = value


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(*describe_validation_error(exc, Recipe)) from None


def recipe_json_schema() -> dict[str, Any]:
    return Recipe.model_json_schema()


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe (every default filled in) as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
