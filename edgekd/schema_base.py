"""The base of every recipe section, apart from recipe.py so that method files can define their options."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A recipe section: unknown keys are errors and a loaded recipe cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
