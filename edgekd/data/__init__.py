"""Data: the images a run learns from, split, subset and fed the same way on every machine."""

from __future__ import annotations

from edgekd.data.bundle import DataBundle, InputSpec, build_data

__all__ = ["DataBundle", "InputSpec", "build_data"]
