"""Latency budgets: time a student family on the target runtime, cache the table per machine, choose."""

from edgekd.sizing.cache import LatencyCache
from edgekd.sizing.fingerprint import LatencyTarget, fingerprint, machine_fingerprint
from edgekd.sizing.latency_budget import latency_table, size_to_latency

__all__ = [
    "LatencyCache",
    "LatencyTarget",
    "fingerprint",
    "latency_table",
    "machine_fingerprint",
    "size_to_latency",
]
