"""The base of every recipe section, apart from recipe.py so that method files can define their options."""

from typing import Any

from pydantic import BaseModel, ConfigDict

# Bounds that a real run never needs but an accident can reach (`epochs: 1e12`): refused before any work.
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_IMAGE_SIZE = 4_096
MAX_SECONDS = 3_600.0
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_THREADS = 1_024
MAX_ITERS = 10_000_000  # timed or warm-up runs of a benchmark
MAX_IMAGES = 10_000_000  # counts of images: per class, calibration, parity, plotted


class Section(BaseModel):
    """A recipe section: unknown keys are errors, types are strict (`lr: '0.1'` or `batch_size: yes` is an
    error, not a coercion that hides a mistake) and a loaded recipe cannot change."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False
    )


def shown_value(value: Any, limit: int = 80) -> str:
    """A rejected value as an error shows it: its repr, cut to `limit` characters (a value can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text):,} chars)"


def lower_first(text: str) -> str:
    """pydantic's 'String should match pattern ...' reads on after a colon; only its first letter is lowered,
    so a pattern or value quoted in it keeps its case."""
    return text[:1].lower() + text[1:]
