"""A toy backend for tests/test_backend_catalog.py: what a new backend adds, in one module here (a real one
is two files, an exporter and a runner). Its artifact is a folder (as a CoreML .mlpackage is): the weights of
a Flatten + Linear classifier in an .npz and edgekd's metadata in a JSON file; its runner is numpy.

Importable only once the test has put its entry into the catalog: an Exporter reads its entry when defined.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgekd.bench.runners.base import Runner, as_float32_batch, check_precision
from edgekd.exporters.base import Artifact, Exporter, ExportRequest, files_size

WEIGHTS = "weights.npz"
METADATA = "edgekd.json"


class NpzExporter(Exporter):
    format = "npzdir"

    def _export(self, request: ExportRequest) -> Artifact:
        linear = request.model[-1]  # the test's model: nn.Sequential(nn.Flatten(), nn.Linear(...))
        folder = self.artifact_path(request)
        folder.mkdir(parents=True, exist_ok=True)
        weight = linear.weight.detach().cpu().numpy()
        np.savez(folder / WEIGHTS, weight=weight, bias=linear.bias.detach().cpu().numpy())
        metadata = {**request.io.metadata(), "precision": request.precision, "format": self.format}
        (folder / METADATA).write_text(json.dumps(metadata))
        size = files_size([folder])
        return Artifact(folder, self.format, request.precision, request.io, size, {"tool": "numpy"})


def read_metadata(folder: Path) -> dict[str, str]:
    return json.loads((Path(folder) / METADATA).read_text())


class NpzRunner(Runner):
    backend = "numpy"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = None):
        super().__init__(threads=threads, device="cpu")
        self.path = Path(path)
        self.precision = check_precision(precision)

    def _load(self) -> None:
        with np.load(self.path / WEIGHTS) as stored:
            self._weight, self._bias = stored["weight"], stored["bias"]

    def run(self, images: np.ndarray) -> np.ndarray:
        batch = as_float32_batch(images)
        return (batch.reshape(len(batch), -1) @ self._weight.T + self._bias).astype(np.float32)
