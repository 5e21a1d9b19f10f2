"""The recipe's `distill:` section: built from the method catalog (one options block per method), plus
per-stage training changes and artifacts loaded from other runs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgekd.config.units import LoosePath
from edgekd.distill.registry import distill_section_model


# The `distill:` section has one options block per registered method, so the schema shows them all.
class DistillConfig(distill_section_model()):  # type: ignore[misc]
    stages: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="Per method (or variant) and stage of its plan, changes to the recipe's `train:` section "
        "for that stage alone: epochs, optimizer, schedule, grad_clip, merged field by field, e.g. "
        "{fitnet: {hint: {optimizer: {lr: 0.01}, schedule: {name: constant}}}}. `edgekd list methods` names "
        "each method's stages. epochs given here replace what the method's plan gives the stage.",
    )
    artifacts: dict[str, dict[str, LoosePath]] = Field(
        default_factory=dict,
        description="Per method (or variant), artifacts to load from another run instead of producing them, "
        "e.g. {refilled: {embedding: runs/other/train/refilled/embedding/artifacts/embedding.pt}}; "
        "'{seed}' in a path is replaced by each student seed. The stage that produces them is skipped. "
        "`edgekd list methods` names each method's artifacts.",
    )
