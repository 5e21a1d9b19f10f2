"""Data: the images a run learns from, split, subset and fed the same way on every machine."""

from __future__ import annotations

from edgekd.data.bundle import DataBundle, DataPlan, InputSpec, build_data

__all__ = ["DataBundle", "DataPlan", "InputSpec", "build_data"]
