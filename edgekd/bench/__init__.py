"""Benchmarking exported models: runners per backend, a latency harness, parity and accuracy checks.

* :func:`runner_for` / :class:`TorchRunner`: one :class:`Runner` interface (``load()``, ``run(images)``,
  ``bind_inference(images)``, ``describe()``) over PyTorch eager, ONNX Runtime, OpenVINO and TensorRT.
* :func:`measure_latency`: cold start, warm-up, then p50/p90/p99 and throughput per batch size, of the
  bound inference call (:class:`BoundInference`).
* :func:`check_parity`: an artifact's logits against PyTorch's, with per-precision tolerances.
* :func:`evaluate_accuracy`: top-1 accuracy of any runner on labelled images.
* :func:`environment_record`: the CPU, cores, OS and package versions a result was measured with.

Backends (onnxruntime, openvino, tensorrt) are imported only when a runner is loaded.
"""

from __future__ import annotations

from edgekd.bench.accuracy import AccuracyResult, batched_logits, evaluate_accuracy, top1_accuracy
from edgekd.bench.environment import EnvironmentRecord, environment_record
from edgekd.bench.latency import BatchLatency, ColdStart, LatencyConfig, LatencyResult, measure_latency
from edgekd.bench.parity import (
    DEFAULT_TOLERANCES,
    ParityError,
    ParityResult,
    ParityTolerance,
    check_parity,
    default_tolerance,
)
from edgekd.bench.runners import (
    BACKEND_FOR_SUFFIX,
    BoundInference,
    OnnxRuntimeRunner,
    OpenVinoRunner,
    Runner,
    TensorRTRunner,
    TorchRunner,
    runner_for,
)

__all__ = [
    "BACKEND_FOR_SUFFIX",
    "DEFAULT_TOLERANCES",
    "AccuracyResult",
    "BatchLatency",
    "BoundInference",
    "ColdStart",
    "EnvironmentRecord",
    "LatencyConfig",
    "LatencyResult",
    "OnnxRuntimeRunner",
    "OpenVinoRunner",
    "ParityError",
    "ParityResult",
    "ParityTolerance",
    "Runner",
    "TensorRTRunner",
    "TorchRunner",
    "batched_logits",
    "check_parity",
    "default_tolerance",
    "environment_record",
    "evaluate_accuracy",
    "measure_latency",
    "runner_for",
    "top1_accuracy",
]
