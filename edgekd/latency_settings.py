"""How the latency harness times a model: the one definition of the timing settings.

The recipe's `benchmark:` section is these fields plus its own, `edgekd bench` derives one option from each
(name, bounds, default, help), and the harness (:func:`edgekd.bench.measure_latency`) takes either of them as
it is. Torch-free and numpy-free: only pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError

from edgekd.errors import EdgekdError
from edgekd.schema_base import (
    MAX_BATCH,
    MAX_ITERS,
    MAX_SECONDS,
    MAX_THREADS,
    Section,
    lower_first,
    shown_value,
)


def _tuple_as_list(value: Any) -> Any:
    # Python callers write batches=(1, 4); YAML cannot make a tuple, so a recipe stays as strict as before.
    return list(value) if isinstance(value, tuple) else value


BatchSizes = Annotated[list[Annotated[int, Field(ge=1, le=MAX_BATCH)]], BeforeValidator(_tuple_as_list)]


class LatencySettings(Section):
    """Per batch size: untimed warm-up runs, then timed runs. Warm-up goes on until both its count and its
    seconds are reached (lazy allocations, caches, CPU frequency); so does timing. The defaults suit a CPU
    (about 2.5 s per batch size for a small model)."""

    batches: BatchSizes = Field([1], min_length=1, max_length=16, description="Batch sizes timed.")
    threads: int | None = Field(
        None,
        ge=1,
        le=MAX_THREADS,
        description="Inference threads of every backend (recorded); unset: each runtime's default.",
    )
    warmup_iters: int = Field(
        10, ge=0, le=MAX_ITERS, description="Untimed warm-up runs per batch size, at least this many."
    )
    warmup_s: float = Field(
        0.5, ge=0, le=MAX_SECONDS, description="Untimed warm-up seconds per batch size, at least this many."
    )
    min_iters: int = Field(
        50, ge=1, le=MAX_ITERS, description="Timed runs per batch size, at least this many."
    )
    min_time_s: float = Field(
        2.0, ge=0, le=MAX_SECONDS, description="Timed seconds per batch size, at least this many."
    )

    def to_dict(self) -> dict[str, Any]:
        """The timing settings alone (a recipe's benchmark section holds more), as a result records them."""
        return {name: getattr(self, name) for name in LatencySettings.model_fields} | {
            "batches": list(self.batches)
        }


class LatencyConfig(LatencySettings):
    """Latency settings built in Python (the library, `edgekd bench`): a bad value is one line naming the
    field, the value and what is allowed, as an EdgekdError. A recipe's section reports its own errors."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise EdgekdError(one_line(error)) from None


def one_line(error: ValidationError) -> str:
    """The first problem of a validation error as 'field: got value: what is allowed'."""
    first = error.errors(include_url=False)[0]
    field = ".".join(str(step) for step in first["loc"]) or "latency settings"
    if first["type"] == "extra_forbidden":
        return f"{field}: unknown latency setting; allowed: {', '.join(LatencySettings.model_fields)}"
    return f"{field}: got {shown_value(first.get('input'))}: {lower_first(first['msg'])}"


def threads_text(threads: int | None) -> str:
    """``1 thread``, ``2 threads``, or ``default threads`` where the runtime picks."""
    if not threads:
        return "default threads"
    return f"{threads} thread{'' if threads == 1 else 's'}"
