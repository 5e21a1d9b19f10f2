"""The base of every recipe section, apart from recipe.py so that method files can define their options."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A recipe section: unknown keys are errors, types are strict (`lr: '0.1'` or `batch_size: yes` is an
    error, not a coercion that hides a mistake) and a loaded recipe cannot change."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False
    )
