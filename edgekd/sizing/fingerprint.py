"""What a latency measurement depends on, as a key: the machine, the libraries and what was timed.

Two measurements with equal keys are interchangeable, so the latency cache files a table under the hash of
its key: another CPU, core count, library version, family, input shape, backend, precision, batch, thread
count or timing setting is another table, and nothing measured elsewhere is ever reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import edgekd
from edgekd.latency_settings import threads_text

# Bumped when the way a member is prepared or timed changes, so older tables are not reused.
SIZING_VERSION = 1


@dataclass(frozen=True)
class LatencyTarget:
    """What one family member is timed as: the family at the student's input on one runtime setting."""

    family: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    backend: str
    precision: str
    batch: int
    threads: int | None
    statistic: str
    timing: dict[str, Any]  # the harness settings (warm-up and timed runs)
    export: dict[str, Any]  # what shapes the exported graph: opset, INT8 calibrator and image count
    # Where onnxruntime runs the members: 'cuda' is its CUDA execution provider (benchmark.onnxruntime_device).
    device: str = "cpu"

    def key(self) -> dict[str, Any]:
        """The target's part of the fingerprint (the statistic is not: every percentile is stored)."""
        target = asdict(self)
        del target["statistic"]
        target["input_shape"] = list(self.input_shape)
        if self.device == "cpu":
            del target[
                "device"
            ]  # tables timed before the device was a setting (all on the CPU) keep their key
        return target

    def describe(self) -> str:
        where = "" if self.device == "cpu" else f" on {self.device}"
        return f"{self.backend}{where} {self.precision}, batch {self.batch}, {threads_text(self.threads)}"


def machine_fingerprint() -> dict[str, Any]:
    """The CPU (model, vendor, instruction-set extensions), its cores, the GPU and every library version."""
    from edgekd.bench import environment_record

    env = environment_record().to_dict()
    keep = ("cpu", "cpu_vendor", "cpu_isa", "physical_cores", "logical_cores", "usable_cores", "machine")
    return {
        **{name: env[name] for name in keep},
        "cuda_device": env["cuda_device"],
        "python": env["python"],
        "packages": env["packages"],
        "edgekd": edgekd.__version__,
    }


def fingerprint(target: LatencyTarget, machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole key of a latency table: machine, libraries, target and the sizing procedure's version."""
    return {
        "sizing_version": SIZING_VERSION,
        "machine": machine if machine is not None else machine_fingerprint(),
        "target": target.key(),
    }


def fingerprint_hash(key: dict[str, Any]) -> str:
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
