"""The latency cache: one JSON file per fingerprint, one entry per family member, written as measured.

A file whose stored key differs from the one asked for (a hash collision, an edited file) is not used. An
entry that is not what `put` writes (timings that are missing, not numbers, zero, negative or not finite:
an edited or damaged file) is dropped with a warning, so the member is timed again and the entry rewritten;
a zero timing would otherwise fit every limit. Each measurement is saved at once (atomically), so an
interrupted sizing keeps what it timed.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

from edgekd.errors import EdgekdError
from edgekd.fileio import write_json
from edgekd.sizing.fingerprint import fingerprint_hash


class LatencyCache:
    """Timings (p50/p90/p99 in ms) of family members under one fingerprint, kept in ``folder``."""

    def __init__(self, folder: Path, key: dict[str, Any]):
        self.key = key
        self.path = Path(folder) / f"{fingerprint_hash(key)}.json"
        self.entries: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged cache file is measured anew and rewritten, never trusted
        if not isinstance(stored, dict) or stored.get("key") != json.loads(json.dumps(self.key)):
            return {}
        entries = stored.get("members")
        if not isinstance(entries, dict):
            return {}
        return {member: entry for member, entry in entries.items() if self._usable(member, entry)}

    def _usable(self, member: str, entry: Any) -> bool:
        problem = entry_problem(entry)
        if problem is not None:
            warnings.warn(
                f"latency cache {self.path}: the entry of '{member}' is ignored ({problem}); it is timed again",
                UserWarning,
                stacklevel=2,
            )
        return problem is None

    def get(self, member: str) -> dict[str, float] | None:
        entry = self.entries.get(member)
        return dict(entry["timings_ms"]) if entry is not None else None

    def put(self, member: str, timings_ms: dict[str, float]) -> None:
        self.entries[member] = {
            "timings_ms": timings_ms,
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        try:
            write_json(self.path, {"key": self.key, "members": self.entries})
        except OSError as err:
            raise EdgekdError(
                f"student.budget.latency.cache_dir: cannot write {self.path} ({err.strerror}); "
                "allowed: a writable folder"
            ) from None


# What time_member measures (measure.py): every entry holds all three.
TIMINGS = ("p50", "p90", "p99")


def entry_problem(entry: Any) -> str | None:
    """Why a stored entry cannot be trusted, or None: its timings must be finite positive numbers (ms)."""
    timings = entry.get("timings_ms") if isinstance(entry, dict) else None
    if not isinstance(timings, dict):
        return "no timings_ms mapping"
    for statistic in TIMINGS:
        value = timings.get(statistic)
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{statistic} is {shown}, not a number of milliseconds"
        if not (math.isfinite(value) and value > 0):
            return f"{statistic} is {shown}; allowed: a finite time above 0 ms"
    return None
