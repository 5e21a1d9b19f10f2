"""Pydantic's validation errors as one recipe line: the field's path, what was given and what is allowed.

The describer takes the model that was validated, so an error inside a nested block (a stage's training
changes, a variant's options) suggests the fields of that block, not those of the whole recipe.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import ValidationError

from edgekd.schema_base import Section, lower_first, shown_value

_UNIONS = (typing.Union, types.UnionType)  # `Optional[X]` and `X | None`


def describe_validation_error(exc: ValidationError, model: type[Section]) -> tuple[str, str]:
    """The first error of validating `model` as (field path relative to it, 'what was given, what is
    allowed'); the count of the others is added."""
    # An unknown key first: a misspelt field explains the "is required" of the field it was meant to be.
    errors = sorted(exc.errors(include_url=False), key=lambda error: error["type"] != "extra_forbidden")
    first = errors[0]
    # pydantic marks a rejected dict key with a '[key]' step: the key itself is the path's last step
    loc = [str(p) for p in first["loc"] if p != "[key]"]
    field = ".".join(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        message = unknown_field_message(loc[-1], allowed_fields(model, loc[:-1]))
    elif kind == "missing":
        message = "is required"
    elif kind.startswith("value_error"):
        field, message = _split_field_prefix(field, first["msg"].removeprefix("Value error, "))
    else:
        message = f"got {shown_value(first.get('input'))}: {lower_first(first['msg'])}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return field, message


def unknown_field_message(name: str, allowed: list[str]) -> str:
    """'unknown field (did you mean ...? allowed here: ...)' for a key that is not one of `allowed`."""
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown field ({hint}allowed here: {', '.join(allowed)})"


def allowed_fields(model: type[Section], loc: list[str]) -> list[str]:
    """The field names of the section reached by following `loc` from `model` (a mapping's key is a step of
    its own: `stages.fitnet.hint` walks through two keys); [] when `loc` leads to no section."""
    annotation: Any = model
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    section = _section_in(annotation)
    return sorted(section.model_fields) if section else []


def _step(annotation: Any, part: str) -> Any:
    """The annotation one path step below `annotation`: a section's field, or a mapping's values."""
    section = _section_in(annotation)
    if section is not None:
        field = section.model_fields.get(part)
        return field.annotation if field is not None else None
    return _mapping_values(annotation)


def _section_in(annotation: Any) -> type[Section] | None:
    """The section an annotation holds: itself, or the one inside `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    if typing.get_origin(annotation) in _UNIONS:
        for arg in typing.get_args(annotation):
            found = _section_in(arg)
            if found is not None:
                return found
    return None


def _mapping_values(annotation: Any) -> Any:
    """The value type of `dict[K, V]` (or of `dict[K, V] | None`), else None."""
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    if typing.get_origin(annotation) in _UNIONS:
        for arg in typing.get_args(annotation):
            found = _mapping_values(arg)
            if found is not None:
                return found
    return None


def _split_field_prefix(field: str, message: str) -> tuple[str, str]:
    """Section validators start their message with the sub-field they blame ('classes: ...'): move it to the path."""
    match = re.match(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): (.*)$", message)
    if match:
        sub, message = match.groups()
        field = f"{field}.{sub}" if field else sub
    return field or "recipe", message
