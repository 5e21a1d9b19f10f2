"""How busy the machine was while something was timed: a latency is only as good as the quiet it ran in.

Over the timing window, from the kernel's counters (Linux: /proc/stat, /proc/loadavg):

* ``others_cores``: CPU time that other processes used, in cores on average (the machine's busy time minus
  this process's own), so a p99 of 176 ms beside a p50 of 0.58 ms can be told apart from a slow model;
* ``steal``: the share of CPU time the hypervisor gave to other guests (a noisy neighbour on a VM);
* ``loadavg_1m``: the kernel's one-minute load average at the end (runnable tasks, this one included).

``busy`` is set when other processes used at least half a core, or more than 2 % of the time was stolen:
enough to move tail latencies on small models. Elsewhere (no /proc) nothing is known and the record says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC_STAT = Path("/proc/stat")
BUSY_OTHER_CORES = 0.5
BUSY_STEAL = 0.02
# /proc/stat's aggregate line: user nice system idle iowait irq softirq steal (guest time is inside user).
_IDLE_FIELDS = (3, 4)
_STEAL_FIELD = 7


@dataclass(frozen=True)
class CpuCounters:
    """The machine's CPU time (seconds, every core summed) and this process's, at one moment."""

    busy_s: float
    steal_s: float
    total_s: float
    own_s: float
    wall_s: float


@dataclass(frozen=True)
class MachineLoad:
    others_cores: float | None
    steal: float | None
    loadavg_1m: float | None
    cores: int | None

    @property
    def busy(self) -> bool:
        return (self.others_cores or 0.0) >= BUSY_OTHER_CORES or (self.steal or 0.0) > BUSY_STEAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "others_cores": None if self.others_cores is None else round(self.others_cores, 3),
            "steal": None if self.steal is None else round(self.steal, 4),
            "loadavg_1m": self.loadavg_1m,
            "cores": self.cores,
            "busy": self.busy,
        }


def cpu_counters(stat: Path = PROC_STAT) -> CpuCounters | None:
    """Now's counters; None where the kernel does not expose them."""
    try:
        first = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    ticks = [int(value) for value in first[1:9]]
    hertz = os.sysconf("SC_CLK_TCK")
    idle = sum(ticks[index] for index in _IDLE_FIELDS)
    own = os.times()
    return CpuCounters(
        busy_s=(sum(ticks) - idle - ticks[_STEAL_FIELD]) / hertz,
        steal_s=ticks[_STEAL_FIELD] / hertz,
        total_s=sum(ticks) / hertz,
        own_s=own.user + own.system,
        wall_s=time.monotonic(),
    )


def load_between(before: CpuCounters | None, after: CpuCounters | None) -> MachineLoad:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    loadavg = _loadavg()
    if before is None or after is None or after.wall_s <= before.wall_s or after.total_s <= before.total_s:
        return MachineLoad(None, None, loadavg, cores)
    wall = after.wall_s - before.wall_s
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    steal = (after.steal_s - before.steal_s) / (after.total_s - before.total_s)
    # The counters tick at 100 Hz: over a short window the difference can dip below zero.
    return MachineLoad(max(0.0, others / wall), max(0.0, steal), loadavg, cores)


@contextmanager
def measured_load() -> Iterator[list[MachineLoad]]:
    """``with measured_load() as load:`` ... ``load[0]`` is the machine's load over the block."""
    result: list[MachineLoad] = []
    before = cpu_counters()
    try:
        yield result
    finally:
        result.append(load_between(before, cpu_counters()))


def load_warning(loads: list[dict[str, Any]]) -> str | None:
    """One sentence for a report when any timing ran on a busy machine; None when all were quiet."""
    busy = [load for load in loads if load and load.get("busy")]
    if not busy:
        return None
    worst = max(busy, key=lambda load: load.get("others_cores") or 0.0)
    steal = worst.get("steal") or 0.0
    return (
        f"The machine was busy while {len(busy)} of {len(loads)} latency measurement(s) ran: other processes "
        f"used up to {worst.get('others_cores') or 0:.2f} of {worst.get('cores')} cores"
        + (f" ({steal:.0%} of CPU time stolen by the hypervisor)" if steal > BUSY_STEAL else "")
        + f", load average {worst.get('loadavg_1m')}. Their tail latencies (p90/p99) are likely inflated; "
        "time again on a quiet machine before trusting them."
    )


def artifacts_load_warning(artifacts: list[Any]) -> str | None:
    """load_warning over the latency records of a run's artifacts (ArtifactRecord: `.latency` dicts)."""
    return load_warning([record.latency.get("machine_load") for record in artifacts if record.latency])


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
