"""Paired comparisons over seeds: every student against the reference baseline, seed by seed.

Within one seed every method trains on the same images (the same few-shot draw), from the same
initialization where the architectures agree, and is tested on the same test images, so the per-seed
difference removes what the seed does to both. The interval is on the mean of those differences:

- ``t`` (default): Student's t-interval, mean ± t(0.975, n-1)·s/√n (``scipy.stats.ttest_1samp``); exact when
  the differences are normal, and honest about how little 3-5 seeds say;
- ``bootstrap``: percentile bootstrap of the mean (``scipy.stats.bootstrap``, 10,000 resamples, fixed RNG).
  With few seeds it is too narrow (it cannot see beyond the values it has): prefer ``t`` below ~10 seeds.

"Better" means the whole interval lies above zero, "worse" below; otherwise the comparison shows no
difference at that confidence. One seed gives no interval, and neither do seeds whose differences are all the
same: a spread of zero observed over a handful of seeds says nothing about the spread of the next seed (the t
interval is undefined, the bootstrap's collapses to a point), so no verdict comes from it.

A table compares several students with the reference at once; with ``correction: holm`` the verdicts are
Holm's step-down over the table's comparisons (two-sided p-values of the paired t-test, or of the bootstrap
with ``interval: bootstrap``), so that the chance of any false "better"/"worse" in the table stays at
1 - confidence. The intervals stay per comparison; the report says how many comparisons the table makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from edgekd.seeds import BOOTSTRAP_SEED

Interval = Literal["t", "bootstrap"]
Correction = Literal["none", "holm"]
BOOTSTRAP_RESAMPLES = 10_000


def mean_interval(
    differences: Sequence[float], *, confidence: float = 0.95, method: Interval = "t"
) -> tuple[float, float] | None:
    """The `confidence` interval of the mean of `differences`; None for fewer than two values or none of
    them different (no spread observed: no interval can be drawn from it)."""
    values = np.asarray(differences, dtype=np.float64)
    if not has_spread(values):
        return None
    from scipy import stats

    if method == "t":
        low, high = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    elif method == "bootstrap":
        result = stats.bootstrap(
            (values,),
            np.mean,
            confidence_level=confidence,
            n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(BOOTSTRAP_SEED),
        )
        low, high = result.confidence_interval
    else:
        raise ValueError(f"interval method must be 't' or 'bootstrap', got {method!r}")
    return float(low), float(high)


def has_spread(values: np.ndarray) -> bool:
    return len(values) >= 2 and not np.all(values == values[0])


def p_value(differences: Sequence[float], method: Interval = "t") -> float | None:
    """Two-sided p-value of "the mean difference is zero" (None where no interval can be drawn)."""
    values = np.asarray(differences, dtype=np.float64)
    if not has_spread(values):
        return None
    if method == "t":
        from scipy import stats

        return float(stats.ttest_1samp(values, 0.0).pvalue)
    # the bootstrap's: twice the share of resampled means on the far side of zero from the observed mean
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = rng.choice(values, size=(BOOTSTRAP_RESAMPLES, len(values)), replace=True).mean(axis=1)
    far_side = np.mean(means <= 0) if values.mean() > 0 else np.mean(means >= 0)
    return float(min(1.0, 2 * far_side))


def holm_adjusted(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values over the comparisons that have one (None stays None)."""
    present = sorted((p, index) for index, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))  # monotone: never below an earlier step
        adjusted[index] = running
    return adjusted


def verdict(interval: tuple[float, float] | None, seeds: int = 1) -> str:
    if interval is None:
        return "one seed: no interval" if seeds < 2 else f"same difference on all {seeds} seeds: no interval"
    low, high = interval
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no difference shown"


def paired_difference(
    values: dict[int, float],
    reference: dict[int, float],
    *,
    reference_name: str,
    metric: str = "test_acc",
    confidence: float = 0.95,
    method: Interval = "t",
) -> dict[str, Any]:
    """`values` minus `reference`, paired by seed (both map seed -> value, over the same seeds)."""
    seeds = sorted(values)
    if sorted(reference) != seeds:
        raise ValueError(f"paired comparison needs the same seeds: {seeds} vs {sorted(reference)}")
    differences = [values[seed] - reference[seed] for seed in seeds]
    interval = mean_interval(differences, confidence=confidence, method=method)
    return {
        "reference": reference_name,
        "metric": metric,
        "seeds": seeds,
        "differences": [round(d, 4) for d in differences],
        "mean": round(float(np.mean(differences)), 4),
        "std": round(float(np.std(differences, ddof=1)), 4) if len(differences) > 1 else None,
        "confidence": confidence,
        "interval_method": method,
        "interval": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
        "excludes_zero": interval is not None and (interval[0] > 0 or interval[1] < 0),
        "verdict": verdict(interval, len(seeds)),
        "p_value": p_value(differences, method),
    }


def correct_verdicts(comparisons: list[dict[str, Any]], correction: Correction) -> None:
    """Record each comparison's place in its table (how many it makes) and, with Holm, its adjusted p-value
    and the verdict that follows from it (in place)."""
    adjusted = holm_adjusted([c["p_value"] for c in comparisons]) if correction == "holm" else None
    for index, comparison in enumerate(comparisons):
        comparison["comparisons"] = len(comparisons)
        comparison["correction"] = correction
        if adjusted is None or adjusted[index] is None:
            continue
        comparison["adjusted_p_value"] = adjusted[index]
        # Holm only ever raises a p-value: it can take a verdict away, never give one
        if adjusted[index] >= 1 - comparison["confidence"] and comparison["excludes_zero"]:
            comparison["verdict"] = "no difference shown after Holm's correction"


def difference_cell(paired: dict[str, Any] | None) -> str:
    """``+1.66 [+0.21, +3.11] better`` for the tables; ``+1.66`` with one seed; ``-`` without a pairing."""
    if paired is None:
        return "-"
    text = f"{paired['mean']:+.2f}"
    if paired["interval"] is None:
        return text
    low, high = paired["interval"]
    word = {"better": " better", "worse": " worse"}.get(paired["verdict"], "")
    return f"{text} [{low:+.2f}, {high:+.2f}]{word}"
