"""Parity: does an exported artifact compute what the PyTorch student computes, on the same real images?

Both sides are plain N×classes logit arrays, so this module knows nothing of file formats or backends. What
"close enough" means depends on the artifact's precision; the defaults are :data:`edgekd.formats.PARITY_DEFAULTS`
(the recipe's parity section defaults to them too):

* fp32 must match to rounding: the largest absolute logit difference is bounded.
* fp16 rounds every activation: a looser absolute bound and a least top-1 agreement.
* int8 changes logits by design; it is judged by top-1 agreement, not by absolute error.

Logit errors grow with the logits' magnitude, so a tolerance may also allow ``max_rel`` times the largest
reference logit on top of ``max_abs`` (like ``numpy.allclose``'s atol + rtol). The defaults use absolute
bounds only, as the recipe's parity section does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgekd.errors import CheckFailed, EdgekdError
from edgekd.formats import PARITY_DEFAULTS, PRECISIONS


def _not_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float)


class ParityError(CheckFailed):
    """An artifact's logits are outside the tolerance for its precision (the input was fine: exit code 1)."""


@dataclass(frozen=True)
class ParityTolerance:
    """Limits an artifact must stay within; a None limit is not checked.

    ``max_abs``: largest allowed absolute logit difference (plus ``max_rel`` × the largest absolute
    reference logit, when ``max_rel`` is set). ``max_mean_abs``: largest allowed mean absolute difference.
    ``min_top1``: least fraction of images whose top-1 class agrees with the reference.
    """

    max_abs: float | None = None
    min_top1: float | None = None
    max_mean_abs: float | None = None
    max_rel: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_abs", "max_mean_abs", "max_rel"):
            value = getattr(self, name)
            if value is not None and (_not_number(value) or not value >= 0):
                raise EdgekdError(f"parity tolerance {name}: got {value!r}; allowed: a number >= 0, or None")
        if self.min_top1 is not None and (_not_number(self.min_top1) or not 0 <= self.min_top1 <= 1):
            raise EdgekdError(
                f"parity tolerance min_top1: got {self.min_top1!r}; allowed: a fraction in [0, 1], or None"
            )

    def abs_limit(self, logit_scale: float) -> float | None:
        """The absolute error allowed for logits whose largest magnitude is ``logit_scale``."""
        if self.max_abs is None and self.max_rel is None:
            return None
        return (self.max_abs or 0.0) + (self.max_rel or 0.0) * logit_scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_TOLERANCES: dict[str, ParityTolerance] = {
    precision: ParityTolerance(max_abs=limits.max_abs, min_top1=limits.min_top1)
    for precision, limits in PARITY_DEFAULTS.items()
}


@dataclass(frozen=True)
class ParityResult:
    """How an artifact's logits compare with the reference's on the same images."""

    precision: str
    images: int
    max_abs: float
    mean_abs: float
    top1_agreement: float  # fraction of images with the same top-1 class
    logit_scale: float  # largest absolute reference logit, to judge max_abs against
    passed: bool
    failure: str | None  # which metric missed which limit and by how much; None when passed
    tolerance: ParityTolerance

    @property
    def rel_error(self) -> float:
        """max_abs relative to the logit scale (inf when every reference logit is 0)."""
        return self.max_abs / self.logit_scale if self.logit_scale > 0 else float("inf")

    def raise_if_failed(self, what: str = "artifact") -> None:
        if not self.passed:
            raise ParityError(f"{what}: {self.precision} parity failed: {self.failure}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tolerance"] = self.tolerance.to_dict()
        data["rel_error"] = self.rel_error
        return data


def default_tolerance(precision: str) -> ParityTolerance:
    return DEFAULT_TOLERANCES[_check_precision(precision)]


def check_parity(
    reference: np.ndarray,
    outputs: np.ndarray,
    precision: str,
    tolerance: ParityTolerance | None = None,
) -> ParityResult:
    """Compare ``outputs`` (the artifact's N×classes logits) with ``reference`` (PyTorch's, same images).

    ``tolerance`` defaults to :data:`DEFAULT_TOLERANCES` for ``precision``. Returns the metrics and whether
    they pass; it does not raise on a failed check (call ``raise_if_failed``), only on unusable inputs.
    """
    precision = _check_precision(precision)
    tolerance = tolerance if tolerance is not None else DEFAULT_TOLERANCES[precision]
    reference, outputs = _check_logits(reference, outputs)
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    finite = np.isfinite(outputs).all()
    max_abs = float(difference.max()) if finite else float("inf")
    mean_abs = float(difference.mean()) if finite else float("inf")
    agreement = float((outputs.argmax(axis=1) == reference.argmax(axis=1)).mean())
    scale = float(np.abs(reference).max())
    failures = [] if finite else [f"outputs hold {int((~np.isfinite(outputs)).sum())} non-finite values"]
    failures += _limit_failures(tolerance, precision, max_abs, mean_abs, agreement, scale, len(reference))
    return ParityResult(
        precision=precision,
        images=len(reference),
        max_abs=max_abs,
        mean_abs=mean_abs,
        top1_agreement=agreement,
        logit_scale=scale,
        passed=not failures,
        failure="; ".join(failures) if failures else None,
        tolerance=tolerance,
    )


def _limit_failures(
    tolerance: ParityTolerance,
    precision: str,
    max_abs: float,
    mean_abs: float,
    agreement: float,
    scale: float,
    images: int,
) -> list[str]:
    failures = []
    abs_limit = tolerance.abs_limit(scale)
    if abs_limit is not None and not max_abs <= abs_limit:
        failures.append(_over("max_abs", max_abs, abs_limit, precision, _abs_limit_words(tolerance, scale)))
    if tolerance.max_mean_abs is not None and not mean_abs <= tolerance.max_mean_abs:
        failures.append(_over("mean_abs", mean_abs, tolerance.max_mean_abs, precision, "max_mean_abs"))
    if tolerance.min_top1 is not None and agreement < tolerance.min_top1:
        disagree = round((1 - agreement) * images)
        failures.append(
            f"top1_agreement {agreement:.4f} is below the {precision} min_top1 {tolerance.min_top1:.4f} by "
            f"{tolerance.min_top1 - agreement:.4f} ({disagree} of {images} images disagree)"
        )
    return failures


def _over(metric: str, value: float, limit: float, precision: str, limit_name: str) -> str:
    ratio = f", {value / limit:.1f}x" if limit > 0 and np.isfinite(value) else ""
    return (
        f"{metric} {value:.3e} exceeds the {precision} {limit_name} {limit:.3e} by {value - limit:.3e}{ratio}"
    )


def _abs_limit_words(tolerance: ParityTolerance, scale: float) -> str:
    if tolerance.max_rel is None:
        return "max_abs"
    return (
        f"limit (max_abs {tolerance.max_abs or 0:.1e} + max_rel {tolerance.max_rel:.1e} × scale {scale:.3g})"
    )


def _check_logits(reference: Any, outputs: Any) -> tuple[np.ndarray, np.ndarray]:
    reference, outputs = np.asarray(reference), np.asarray(outputs)
    for name, logits in (("reference", reference), ("outputs", outputs)):
        if logits.ndim != 2 or logits.shape[0] == 0 or not np.issubdtype(logits.dtype, np.number):
            raise EdgekdError(
                f"parity {name}: shape {logits.shape} dtype {logits.dtype} is not allowed; give N×classes "
                "numeric logits with N >= 1"
            )
    if reference.shape != outputs.shape:
        raise ParityError(
            f"parity: outputs have shape {outputs.shape}, the reference {reference.shape}; the artifact "
            "computes something else (classes or batch differ)"
        )
    if not np.isfinite(reference).all():
        raise EdgekdError("parity reference: the PyTorch logits hold non-finite values; check the model")
    return reference, outputs


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise EdgekdError(f"precision: got {precision!r}; allowed: {', '.join(PRECISIONS)}")
    return precision
