"""The latency harness: cold start, warm-up, then timed synchronous runs per batch size, for any Runner.

What is timed is the bare inference call, as OpenVINO's ``benchmark_app`` times an InferRequest: for each
batch size the runner binds the batch once (:meth:`Runner.bind_inference`: the input set on the request,
IO binding, a tensor already on the device), and each timed run is the wall time of the bound call until
the result is ready. Converting a host array, allocating and copying the logits out are a caller's costs
that differ between Python wrappers; on the 25 µs quickstart student they were a sixth of ``run()``'s
time. Runners that cannot bind are timed through ``run()``; the result's ``timed_call`` says which call
was timed. Every backend is timed the same way, with the thread count recorded, so the results of
different backends measured with one config on one machine can be compared.

* Cold start is reported apart from the steady state: the time of ``load()`` (session creation, compilation,
  deserialization) and of the first inference after it, each on its own.
* Warm-up runs until both ``warmup_iters`` runs and ``warmup_s`` seconds are done (lazy allocations, caches,
  CPU frequency), per batch size. These settings are :class:`edgekd.latency_settings.LatencySettings`: a
  recipe's benchmark section is one, and so is the :class:`LatencyConfig` built in Python.
* Timed runs continue until both ``min_iters`` runs and ``min_time_s`` seconds are done, each timed with
  ``time.perf_counter_ns``; throughput is the images processed divided by the wall time of the whole timed
  loop at that batch size (not 1000 / latency, which would ignore the time between runs).
* ``run()`` is still called once per batch size before timing, and the bound call's logits are compared
  with its logits after timing: a runner returning the wrong shape, or a bound call that does not compute
  the model, is an error rather than a fast number. Parity and accuracy use ``run()`` only.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgekd.bench.machine_load import MachineLoad, measured_load
from edgekd.bench.runners.base import BoundInference, Runner
from edgekd.errors import EdgekdError
from edgekd.latency_settings import LatencyConfig, LatencySettings

PERCENTILES = (50, 90, 99)
_NS_PER_MS = 1e6
_NS_PER_S = 1e9
# How far the bound call's logits may be from run()'s, relative to the largest logit (at least 1): the same
# compiled model on the same input; only a runner whose two paths use different kernels differs at all.
_BOUND_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ColdStart:
    """The first use of a runner: ``load()``, then the first inference, timed separately."""

    load_ms: float
    first_inference_ms: float
    batch: int

    @property
    def total_ms(self) -> float:
        return self.load_ms + self.first_inference_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "load_ms": round(self.load_ms, 4),
            "first_inference_ms": round(self.first_inference_ms, 4),
            "total_ms": round(self.total_ms, 4),
            "batch": self.batch,
        }


@dataclass(frozen=True)
class BatchLatency:
    """Steady-state timing at one batch size; latencies in ms per call, throughput in images per second."""

    batch: int
    iterations: int
    timed_s: float
    warmup_iters: int
    warmup_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float

    def to_dict(self) -> dict[str, Any]:
        # Rounded to 0.1 µs and 0.01 image/s: finer digits are noise and make the JSON hard to read.
        data = asdict(self)
        for key, value in data.items():
            if key.endswith("_ms") or key.endswith("_s"):
                data[key] = round(value, 4 if key.endswith("_ms") else 3)
        data["throughput"] = round(self.throughput, 2)
        return data


@dataclass(frozen=True)
class LatencyResult:
    """All timings of one runner; ``threads`` is the thread count the backend reports using."""

    backend: str
    threads: int | str | None
    cold_start: ColdStart | None  # None when the runner was already loaded before the harness got it
    batches: tuple[BatchLatency, ...]
    config: LatencySettings
    runner: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # of the random images drawn when only a shape was given
    timed_call: str = ""  # what each timed run was (BoundInference.timed_call), for the results files
    # How busy the machine was while the batches were timed (machine_load.py): others' cores, steal, load.
    machine_load: MachineLoad | None = None

    def at_batch(self, batch: int) -> BatchLatency:
        for timing in self.batches:
            if timing.batch == batch:
                return timing
        raise EdgekdError(f"batch: {batch} was not timed; timed: {[t.batch for t in self.batches]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "threads": self.threads,
            "cold_start": self.cold_start.to_dict() if self.cold_start else None,
            "batches": [timing.to_dict() for timing in self.batches],
            "config": {**self.config.to_dict(), "seed": self.seed},
            "runner": self.runner,
            "timed_call": self.timed_call,
            "machine_load": self.machine_load.to_dict() if self.machine_load else None,
        }


def measure_latency(
    runner: Runner,
    images_or_shape: np.ndarray | Sequence[int],
    config: LatencySettings | None = None,
    *,
    seed: int = 0,
    **overrides: Any,
) -> LatencyResult:
    """Time ``runner`` at each batch size of ``config`` (fields may also be given as keywords).

    ``config`` is any :class:`LatencySettings`: a :class:`LatencyConfig`, or a recipe's benchmark section.
    ``images_or_shape`` is either real N×C×H×W images (each batch takes the first images, repeated when
    fewer than the batch size exist) or the C×H×W shape of one image (standard-normal images are drawn
    with ``seed``).
    The runner is loaded here if it is not yet, and that load is the reported cold start.
    """
    config = _config(config, overrides)
    make_batch = _batch_source(images_or_shape, seed)
    _apply_threads(runner, config.threads)
    cold_start = None
    if not runner.loaded:
        cold_start = _cold_start(runner, make_batch(config.batches[0]))
    with measured_load() as load:
        timed = [_time_batch(runner, make_batch(batch), config) for batch in config.batches]
    description = runner.describe()
    return LatencyResult(
        backend=runner.backend,
        threads=description.get("threads"),
        cold_start=cold_start,
        batches=tuple(timing for timing, _ in timed),
        config=config,
        runner=description,
        seed=seed,
        timed_call="; ".join(dict.fromkeys(call for _, call in timed)),
        machine_load=load[0],
    )


def _config(config: LatencySettings | None, overrides: dict[str, Any]) -> LatencySettings:
    config = config or LatencyConfig()
    known = set(LatencySettings.model_fields)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise EdgekdError(
            f"latency options: {', '.join(unknown)} not known; allowed: {', '.join(sorted(known))}"
        )
    # Rebuilt, not copied: an override is checked like any other value.
    return LatencyConfig(**{**config.to_dict(), **overrides}) if overrides else config


def _apply_threads(runner: Runner, threads: int | None) -> None:
    if threads is None or runner.threads == threads:
        return
    if runner.loaded:
        # Thread pools are created by load(); changing the setting afterwards would be recorded but not used.
        raise EdgekdError(
            f"threads: the {runner.backend} runner is already loaded with threads={runner.threads}; "
            f"create it with threads={threads} or leave LatencyConfig.threads unset"
        )
    runner.threads = threads


def _cold_start(runner: Runner, batch: np.ndarray) -> ColdStart:
    start = time.perf_counter_ns()
    runner.load()
    loaded = time.perf_counter_ns()
    runner.run(batch)
    done = time.perf_counter_ns()
    return ColdStart(
        load_ms=(loaded - start) / _NS_PER_MS,
        first_inference_ms=(done - loaded) / _NS_PER_MS,
        batch=len(batch),
    )


def _time_batch(runner: Runner, batch: np.ndarray, config: LatencySettings) -> tuple[BatchLatency, str]:
    """The timing of one batch size, and what was timed."""
    runner.prepare_batch(len(batch))
    expected = _checked_logits(runner, batch)
    bound = runner.bind_inference(batch)
    warmup_iters, warmup_ns = _repeat(bound.infer, config.warmup_iters, config.warmup_s, record=None)
    durations: list[int] = []
    _, timed_ns = _repeat(bound.infer, config.min_iters, config.min_time_s, record=durations)
    _check_bound_logits(runner, bound, expected)
    return _summarize(len(batch), durations, timed_ns, warmup_iters, warmup_ns), bound.timed_call


def _checked_logits(runner: Runner, batch: np.ndarray) -> np.ndarray:
    """One untimed run() first: a runner that does not return a row of logits per image would be timed wrong."""
    logits = np.asarray(runner.run(batch))
    if logits.ndim != 2 or logits.shape[0] != len(batch):
        raise EdgekdError(
            f"{runner.backend} runner: returned shape {logits.shape} for a batch of {len(batch)}; "
            f"expected ({len(batch)}, classes)"
        )
    return logits


def _check_bound_logits(runner: Runner, bound: BoundInference, expected: np.ndarray) -> None:
    """The last timed call must have computed run()'s logits: else its speed is not the model's."""
    logits = np.asarray(bound.logits(), dtype=np.float64)
    if logits.shape != expected.shape:
        raise EdgekdError(
            f"{runner.backend} runner: the bound call gave logits of shape {logits.shape}, run() gave "
            f"{expected.shape}; its timing is not of this model"
        )
    finite = np.isfinite(expected)
    allowed = _BOUND_TOLERANCE * max(1.0, float(np.max(np.abs(expected[finite]), initial=0.0)))
    # NaN where run() gave NaN is the same model (parity reports non-finite logits, not the harness).
    same = np.isclose(logits, expected, rtol=0.0, atol=allowed, equal_nan=True)
    if not same.all():
        difference = float(np.max(np.abs(logits - expected)[~same]))
        raise EdgekdError(
            f"{runner.backend} runner: the bound call's logits differ from run()'s by {difference:.3g} "
            f"(allowed {allowed:.3g}); its timing is not of this model"
        )


def _repeat(
    call: Callable[[], object], min_iters: int, min_s: float, record: list[int] | None
) -> tuple[int, int]:
    """Call ``call()`` until both ``min_iters`` calls and ``min_s`` seconds are done.

    Returns (calls, wall ns of the whole loop); appends each call's duration to ``record`` when given.
    """
    min_ns = int(min_s * _NS_PER_S)
    iterations = 0
    with _gc_paused():
        start = now = time.perf_counter_ns()
        while iterations < min_iters or now - start < min_ns:
            before = time.perf_counter_ns()
            call()
            now = time.perf_counter_ns()
            if record is not None:
                record.append(now - before)
            iterations += 1
    return iterations, now - start


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A garbage collection inside a timed call is Python's cost, not the backend's (timeit does the same)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _summarize(
    batch: int, durations: list[int], timed_ns: int, warmup_iters: int, warmup_ns: int
) -> BatchLatency:
    ms = np.asarray(durations, dtype=np.float64) / _NS_PER_MS
    p50, p90, p99 = (float(value) for value in np.percentile(ms, PERCENTILES))
    return BatchLatency(
        batch=batch,
        iterations=len(ms),
        timed_s=timed_ns / _NS_PER_S,
        warmup_iters=warmup_iters,
        warmup_s=warmup_ns / _NS_PER_S,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        throughput=batch * len(ms) / (timed_ns / _NS_PER_S),
    )


def _batch_source(images_or_shape: np.ndarray | Sequence[int], seed: int) -> Callable[[int], np.ndarray]:
    """A function batch size -> contiguous float32 N×C×H×W batch, from real images or from a shape."""
    if isinstance(images_or_shape, np.ndarray):
        images = images_or_shape
        if images.ndim != 4 or len(images) == 0:
            raise EdgekdError(f"images: shape {images.shape} is not allowed; give N×C×H×W with N >= 1")
        return lambda batch: np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])), np.float32)
    shape = tuple(images_or_shape)
    if len(shape) != 3 or any(not _is_int(size) or size < 1 for size in shape):
        raise EdgekdError(f"image shape: got {shape}; allowed: C×H×W, three integers >= 1")
    rng = np.random.default_rng(seed)
    return lambda batch: rng.standard_normal((batch, *shape), dtype=np.float32)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
