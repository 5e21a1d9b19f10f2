"""Units a recipe may write its numbers in: counts ('200k', '1.5M'), durations ('0.5ms', '500us'), and
paths given as strings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_COUNT_SUFFIXES = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_count(value: Any) -> Any:
    """Read '200k', '1.5M' or 200000 as an integer count; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", value)
        if match:
            number, suffix = match.groups()
            return round(float(number) * _COUNT_SUFFIXES.get(suffix.lower(), 1))
    return value


Count = Annotated[int, BeforeValidator(parse_count), Field(gt=0)]
# Sections are strict (a number must be a number, a flag a flag); a path may be written as a string.
LoosePath = Annotated[Path, Field(strict=False)]


_MS_PER_UNIT = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


def parse_milliseconds(value: Any) -> Any:
    """Read '0.5ms', '500us', '2 ms' or 0.5 as milliseconds; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|µs|s)?\s*", value)
        if match:
            number, unit = match.groups()
            return float(number) * _MS_PER_UNIT[unit or "ms"]
    return value
