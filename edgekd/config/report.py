"""The recipe's `report:` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgekd.schema_base import (
    MAX_IMAGES,
    Section,
)


class ReportConfig(Section):
    plots: bool = Field(True, description="Draw the report's plots (matplotlib, PNG).")
    loss_curves: bool = Field(
        True,
        description="Plot every student's per-epoch training and validation cross-entropy, so methods with and "
        "without a distillation term compare on the same loss (SKD paper, Fig. 5).",
    )
    embedding: bool = Field(
        False,
        description="Plot a 2-D t-SNE of the penultimate features on the test split of the main student and "
        "of `scratch` when it is a baseline (SKD paper, Fig. 6).",
    )
    embedding_points: int = Field(
        1000, ge=10, le=MAX_IMAGES, description="Test images in the embedding plot, at most."
    )
    reference: str | None = Field(
        None,
        description="The baseline every student is compared with, seed by seed (paired differences of test "
        "accuracy with a confidence interval). Null: `scratch` when it is trained.",
    )
    interval: Literal["t", "bootstrap"] = Field(
        "t",
        description="Interval of the mean paired difference: Student's t over seeds (default; honest with "
        "few seeds) or a percentile bootstrap over seeds (too narrow below ~10 seeds).",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the paired intervals.")
    correction: Literal["none", "holm"] = Field(
        "none",
        description="Multiple comparisons: a table compares every student with the reference. 'holm' gives "
        "verdicts by Holm's step-down over the table's comparisons (the chance of any false verdict stays at "
        "1 - confidence); 'none' judges each comparison alone. The report states how many comparisons the "
        "table makes either way.",
    )
