"""Running what edgekd exports: the model's input/output description as the exporters write it, real images
as the artifacts are fed them, and the runner of an exported file as its catalog entry asks for it.

Shared by the build's deploy stage (deploy.py), latency sizing (sizing/) and the report's re-checks; it
exports nothing and checks nothing itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.bench import Runner, runner_for
from edgekd.data import DataBundle
from edgekd.exporters import Artifact, ModelIO
from edgekd.formats import FORMATS


def model_io(data: DataBundle) -> ModelIO:
    spec = data.input_spec
    return ModelIO(spec.channels, spec.height, spec.width, spec.mean, spec.std, tuple(data.class_names))


def split_arrays(data: DataBundle, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A split's images (no augmentation, fixed order) and labels as float32/int64 arrays."""
    images, labels, count = [], [], 0
    for batch_images, batch_labels in data.eval_loader(split):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
        count += len(batch_labels)
        if limit is not None and count >= limit:
            break
    stacked_images = np.concatenate(images).astype(np.float32)
    stacked_labels = np.concatenate(labels).astype(np.int64)
    return stacked_images[:limit], stacked_labels[:limit]


def logits_of(runner: Runner, images: np.ndarray, batch: int = 256) -> np.ndarray:
    runner.load()  # idempotent
    return np.concatenate(
        [runner.run(images[start : start + batch]) for start in range(0, len(images), batch)]
    )


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return round(100.0 * float((logits.argmax(1) == labels).mean()), 4)


def artifact_runner(artifact: Artifact, threads: int | None, onnxruntime_device: str = "cpu") -> Runner:
    return file_runner(artifact.path, artifact.format, artifact.precision, threads, onnxruntime_device)


def file_runner(
    path: Path | str, format_name: str, precision: str, threads: int | None, onnxruntime_device: str = "cpu"
) -> Runner:
    """The runner of an exported file, given the settings its catalog entry asks for: OpenVINO the artifact's
    precision (it picks f32 or f16 arithmetic by it), ONNX Runtime the device whose execution provider runs
    ONNX files (``benchmark.onnxruntime_device``)."""
    settings = {"precision": precision, "device": onnxruntime_device}
    options: dict[str, Any] = {"threads": threads}
    options.update({name: settings[name] for name in FORMATS[format_name].runner_settings})
    return runner_for(path, backend=FORMATS[format_name].runtime, **options)
