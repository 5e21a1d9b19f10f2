"""Which members of a family fit a latency limit, timing as few of them as the answer needs.

Members are visited largest first (by parameters). Rather than timing each in turn — under a tight limit
that is nearly the whole family, one export each — the search bisects the members not yet known and infers
from every timing: a member that does at least the work of one found too slow (each coordinate of its
size grid >=, :func:`edgekd.models.budget.dominates`) is too slow as well, and one that does at most the
work of a fitting one fits. It stops as soon as the ``wanted`` largest fitting members are known, with every
larger member known to be over. The largest fitting member is always one that was timed (every inferred fit
is dominated by a timed one, which has at least its parameters); inferred rows are marked so in the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edgekd.models.budget import dominates

Timings = dict[str, float]


@dataclass
class MemberState:
    """What the search knows of one member."""

    index: int
    params: int
    flops: int
    size: tuple[float, ...]
    timings: Timings | None = None
    source: str = "unknown"  # measured, cached, inferred, skipped
    fits: bool | None = None
    note: str = ""
    inferred_from: int | None = field(default=None, repr=False)

    @property
    def known(self) -> bool:
        return self.fits is not None


def largest_first(states: list[MemberState]) -> list[MemberState]:
    """Most parameters first; ties: more FLOPs first (the slower one), then the order of the family."""
    return sorted(states, key=lambda s: (-s.params, -s.flops, s.index))


def search_fitting(
    states: list[MemberState],
    fits: Callable[[Timings], bool],
    measure: Callable[[MemberState], tuple[Timings, str]],
    wanted: int,
    describe: Callable[[MemberState], str],
) -> None:
    """Resolve states in place until the ``wanted`` largest fitting members are known (or none fits).

    ``measure`` returns a member's timings and their source ("measured" or "cached"); states already known
    (cached, skipped) are used as they are.
    """
    for state in states:
        if state.timings is not None and state.fits is None:
            state.fits = fits(state.timings)
    for state in states:
        if state.timings is not None:
            _propagate(state, states, describe)
    order = largest_first([s for s in states if s.source != "skipped"])
    while True:
        pending = _unresolved_top(order, wanted)
        if not pending:
            return
        probe = pending[len(pending) // 2]
        probe.timings, probe.source = measure(probe)
        probe.fits = fits(probe.timings)
        probe.note = ""
        _propagate(probe, states, describe)


def _unresolved_top(order: list[MemberState], wanted: int) -> list[MemberState]:
    """The unknown members from the largest one still deciding the answer down to the smallest."""
    found = 0
    for position, state in enumerate(order):
        if state.fits is None:
            return [s for s in order[position:] if s.fits is None]
        found += bool(state.fits)
        if found >= wanted:
            return []
    return []


def _propagate(timed: MemberState, states: list[MemberState], describe: Callable[[MemberState], str]) -> None:
    """Infer the members a timed one bounds: those dominating a slow one are slow, those it dominates fit."""
    for other in states:
        if other.known or other.source == "skipped":
            continue
        if not timed.fits and dominates(other.size, timed.size):
            other.fits, other.source = False, "inferred"
            other.note = f"at least the work of {describe(timed)}, which is over"
        elif timed.fits and dominates(timed.size, other.size):
            other.fits, other.source = True, "inferred"
            other.note = f"at most the work of {describe(timed)}, which fits"
        else:
            continue
        other.inferred_from = timed.index
