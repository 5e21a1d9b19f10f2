"""Paired comparisons over seeds: every student against the reference baseline, seed by seed.

Within one seed every method trains on the same images (the same few-shot draw), from the same
initialization where the architectures agree, and is tested on the same test images, so the per-seed
difference removes what the seed does to both. The interval is on the mean of those differences:

- ``t`` (default): Student's t-interval, mean ± t(0.975, n-1)·s/√n (``scipy.stats.ttest_1samp``); exact when
  the differences are normal, and honest about how little 3-5 seeds say;
- ``bootstrap``: percentile bootstrap of the mean (``scipy.stats.bootstrap``, 10,000 resamples, fixed RNG).
  With few seeds it is too narrow (it cannot see beyond the values it has): prefer ``t`` below ~10 seeds.

"Better" means the whole interval lies above zero, "worse" below; otherwise the comparison shows no
difference at that confidence. One seed gives no interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

Interval = Literal["t", "bootstrap"]
BOOTSTRAP_RESAMPLES = 10_000
_BOOTSTRAP_SEED = 0


def mean_interval(
    differences: Sequence[float], *, confidence: float = 0.95, method: Interval = "t"
) -> tuple[float, float] | None:
    """The `confidence` interval of the mean of `differences` (None for fewer than two values)."""
    values = np.asarray(differences, dtype=np.float64)
    if len(values) < 2:
        return None
    if np.all(values == values[0]):  # no spread: every method of interval is the point itself
        return float(values[0]), float(values[0])
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
            rng=np.random.default_rng(_BOOTSTRAP_SEED),
        )
        low, high = result.confidence_interval
    else:
        raise ValueError(f"interval method must be 't' or 'bootstrap', got {method!r}")
    return float(low), float(high)


def verdict(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return "one seed: no interval"
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
        "verdict": verdict(interval),
    }


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
