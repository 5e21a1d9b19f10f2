"""The latency cache: one JSON file per fingerprint, one entry per family member, written as measured.

A file whose stored key differs from the one asked for (a hash collision, an edited file) is not used. Each
measurement is saved at once (atomically), so an interrupted sizing keeps what it timed.
"""

from __future__ import annotations

import json
import time
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
        return entries if isinstance(entries, dict) else {}

    def get(self, member: str) -> dict[str, float] | None:
        entry = self.entries.get(member)
        return dict(entry["timings_ms"]) if entry and "timings_ms" in entry else None

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
