"""Declared payloads of stage artifacts: what a file that a recipe loads from another run
(`distill.artifacts`) must hold before edgekd trusts it.

Each artifact kind declares its payload once, beside the code that writes it (srm.py's dictionaries,
distpro.py's process): keys, types, tensor dtypes and shapes, finiteness, order. A file that differs is
refused in one line naming the file, the place in the payload, what is there and what is allowed, when the
recipe is checked: not as a traceback, or a NaN loss, after the teacher has trained.

Sizes have names: an integer declared with `binds="atoms"`, or a list declared with `binds="steps"` (its
length), binds a name that later shapes (`Tensor(("channels", "atoms"))`) and bounds
(`Number(maximum="atoms")`) use, so fields are checked in the order they are declared. A mapping's names
are its own (each tap of a list binds its own sizes); it sees those of the mappings around it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from edgekd.errors import EdgekdError

Sizes = dict[str, int]
Bound = float | str | None  # a number, or the name of a size bound earlier
_SHOWN_CHARS = 40


class PayloadMismatch(Exception):
    """Where in the payload it differs from its declaration, what is there and what is allowed."""

    def __init__(self, at: str, given: str, allowed: str):
        super().__init__(f"{at or 'the payload'} is {given}; allowed: {allowed}")


class Spec(Protocol):
    def check(self, value: Any, at: str, sizes: Sizes) -> None: ...

    def allowed(self, sizes: Sizes) -> str: ...


def shown(value: Any) -> str:
    """A value as an error message shows it: tensors and containers by their kind, the rest cut short."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of {str(value.dtype).removeprefix('torch.')}, shape {tuple(value.shape)}"
    if isinstance(value, list | tuple | dict):
        return f"a {type(value).__name__} of {len(value)}"
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _resolve(bound: Bound, sizes: Sizes) -> float | None:
    return sizes[bound] if isinstance(bound, str) else bound


def _describe_bound(bound: Bound, sizes: Sizes) -> str:
    return f"{bound} ({sizes[bound]})" if isinstance(bound, str) else f"{bound:g}"


@dataclass(frozen=True)
class Number:
    """A finite int or float (never a bool), within inclusive bounds; `integer` wants an int."""

    integer: bool = False
    minimum: Bound = None
    maximum: Bound = None
    nullable: bool = False
    binds: str | None = None

    def allowed(self, sizes: Sizes) -> str:
        text = "an integer" if self.integer else "a finite number"
        if self.minimum is not None:
            text += f" >= {_describe_bound(self.minimum, sizes)}"
        if self.maximum is not None:
            text += f"{' and' if self.minimum is not None else ''} <= {_describe_bound(self.maximum, sizes)}"
        return f"{text} or None" if self.nullable else text

    def check(self, value: Any, at: str, sizes: Sizes) -> None:
        if value is None and self.nullable:
            return
        kinds = int if self.integer else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            raise PayloadMismatch(at, shown(value), self.allowed(sizes))
        low, high = _resolve(self.minimum, sizes), _resolve(self.maximum, sizes)
        if (low is not None and value < low) or (high is not None and value > high):
            raise PayloadMismatch(at, shown(value), self.allowed(sizes))
        if self.binds is not None:
            sizes[self.binds] = value


@dataclass(frozen=True)
class Text:
    """A string; `hex_digits` wants exactly that many lowercase hexadecimal digits (a digest)."""

    hex_digits: int | None = None

    def allowed(self, sizes: Sizes) -> str:
        return f"{self.hex_digits} hexadecimal digits" if self.hex_digits else "a string"

    def check(self, value: Any, at: str, sizes: Sizes) -> None:
        if not isinstance(value, str) or (
            self.hex_digits is not None and not _is_hex(value, self.hex_digits)
        ):
            raise PayloadMismatch(at, shown(value), self.allowed(sizes))


def _is_hex(text: str, digits: int) -> bool:
    return len(text) == digits and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Tensor:
    """A real floating-point tensor of the declared shape (sizes by number or name), every value finite
    and within the optional bounds. Integer tensors would be cast silently (weights of zeros), complex ones
    lose their imaginary part: both are refused."""

    dims: tuple[int | str, ...]
    minimum: float | None = None
    maximum: float | None = None

    def shape_text(self, sizes: Sizes) -> str:
        parts = [f"{d} {sizes[d]}" if isinstance(d, str) and d in sizes else str(d) for d in self.dims]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"

    def allowed(self, sizes: Sizes) -> str:
        text = f"a finite floating-point tensor of shape {self.shape_text(sizes)}"
        if self.minimum is not None or self.maximum is not None:
            text += f", values in [{self.minimum:g}, {self.maximum:g}]"
        return text

    def check(self, value: Any, at: str, sizes: Sizes) -> None:
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise PayloadMismatch(at, shown(value), self.allowed(sizes))
        for name in self.dims:  # a size first met here is bound by this tensor
            if isinstance(name, str) and name not in sizes and value.dim() == len(self.dims):
                sizes[name] = value.shape[self.dims.index(name)]
        wanted = tuple(sizes.get(d, -1) if isinstance(d, str) else d for d in self.dims)
        if tuple(value.shape) != wanted:
            raise PayloadMismatch(at, shown(value), f"shape {self.shape_text(sizes)}")
        if not bool(torch.isfinite(value).all()):
            raise PayloadMismatch(at, "a tensor holding NaN or infinite values", "finite values")
        low = self.minimum if self.minimum is not None else -math.inf
        high = self.maximum if self.maximum is not None else math.inf
        if value.numel() and (float(value.min()) < low or float(value.max()) > high):
            raise PayloadMismatch(
                at,
                f"a tensor with values in [{float(value.min()):g}, {float(value.max()):g}]",
                self.allowed(sizes),
            )


@dataclass(frozen=True)
class Items:
    """A list of items of one kind, at least `min_length`; `binds` names its length; `order="increasing"`
    wants each item greater than the one before (so also no repeats); `unique` wants no repeats."""

    item: Spec
    min_length: int = 1
    binds: str | None = None
    order: Literal["increasing"] | None = None
    unique: bool = False

    def allowed(self, sizes: Sizes) -> str:
        rule = (
            ", strictly increasing" if self.order == "increasing" else ", no repeats" if self.unique else ""
        )
        return f"a list of at least {self.min_length} ({self.item.allowed(sizes)}){rule}"

    def check(self, value: Any, at: str, sizes: Sizes) -> None:
        if not isinstance(value, list) or len(value) < self.min_length:
            raise PayloadMismatch(at, shown(value), self.allowed(sizes))
        for index, item in enumerate(value):
            self.item.check(item, f"{at}[{index}]", sizes)
        if self.order == "increasing" and any(b <= a for a, b in itertools.pairwise(value)):
            raise PayloadMismatch(at, f"{_cut(repr(value))}, not strictly increasing", self.allowed(sizes))
        if self.unique and len(set(value)) != len(value):
            raise PayloadMismatch(at, f"{_cut(repr(value))}, with repeats", self.allowed(sizes))
        if self.binds is not None:
            sizes[self.binds] = len(value)


@dataclass(frozen=True)
class Mapping:
    """A dict with the `required` keys (checked in their declared order) and, when present, the `optional`
    ones; other keys are ignored."""

    required: dict[str, Spec] = field(default_factory=dict)
    optional: dict[str, Spec] = field(default_factory=dict)

    def allowed(self, sizes: Sizes) -> str:
        keys = ", ".join(self.required)
        return f"a mapping with keys {keys}" if keys else "a mapping"

    def check(self, value: Any, at: str, sizes: Sizes) -> None:
        if not isinstance(value, dict):
            raise PayloadMismatch(at, shown(value), self.allowed(sizes))
        own = dict(sizes)  # what this mapping binds stays in it
        for key, spec in self.required.items():
            if key not in value:
                raise PayloadMismatch(_join(at, key), "missing", spec.allowed(own))
            spec.check(value[key], _join(at, key), own)
        for key, spec in self.optional.items():
            if key in value:
                spec.check(value[key], _join(at, key), own)


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


@dataclass(frozen=True)
class PayloadSchema:
    """One artifact kind's payload: a mapping whose `format` names the kind and its version."""

    title: str  # "an SRM dictionaries file"
    format: str
    body: Mapping

    def check(self, payload: Any, where: str) -> None:
        """Raise an EdgekdError (one line, starting with `where`) where the payload differs."""
        if not isinstance(payload, dict):
            raise EdgekdError(
                f"{where}: not {self.title}: it holds {shown(payload)}; allowed: a mapping with format "
                f"'{self.format}'"
            )
        if payload.get("format") != self.format:
            raise EdgekdError(
                f"{where}: not {self.title}: its format is {shown(payload.get('format'))}; allowed: '{self.format}'"
            )
        try:
            self.body.check(payload, "", {})
        except PayloadMismatch as mismatch:
            raise EdgekdError(f"{where}: {mismatch}") from None
