"""`edgekd bench` of an artifact file: time an .onnx, .xml or .engine on this machine.

Imports neither torch nor matplotlib (nor the recipe or training code): this is what runs on the edge
device, installed with edgekd's base dependencies only (README, "Benchmark on the device").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.fileio import write_json
from edgekd.latency_settings import LatencySettings


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise EdgekdError(f"--shape: {text!r} is not allowed; give C,H,W as three positive whole numbers")
    channels, height, width = (int(part) for part in parts)
    return channels, height, width


# The timed batch, the runner's own copy of it and its output side by side: a floor on what timing needs.
INPUT_COPIES = 3


def check_input_memory(image_shape: tuple[int, int, int], batch: int, field: str) -> None:
    """Refuse a batch of images that cannot fit in memory (random images of that size would be drawn)."""
    from edgekd.bench.environment import available_memory_bytes

    channels, height, width = image_shape
    needs = INPUT_COPIES * 4 * batch * channels * height * width
    available, where = available_memory_bytes()
    if needs > available:
        raise EdgekdError(
            f"{field}: a batch of {batch} images of {channels}x{height}x{width} needs at least "
            f"{needs / 2**30:,.1f} GiB, more than {where} ({available / 2**30:,.1f} GiB); allowed: a smaller "
            "image shape or batch"
        )


def check_writable_file(path: Path, option: str) -> None:
    """`path` can be written as a file: not a folder, in a folder that exists (or can be made) and is
    writable. Checked before minutes of work, so the result is not lost at the end."""
    from edgekd.fileio import folder_problem

    if path.is_dir():
        raise EdgekdError(f"{option}: '{path}' is a folder; allowed: a file path")
    problem = folder_problem(path.parent)
    if problem is not None:
        raise EdgekdError(f"{option}: '{path}' cannot be written: its folder '{path.parent}' {problem}")
    if len(path.name.encode()) > 255:
        raise EdgekdError(f"{option}: the file name is {len(path.name.encode())} bytes long; allowed: 255")


def artifact_shape(path: Path, shape: str | None) -> tuple[int, int, int]:
    """The input image shape: --shape when given, else the edgekd metadata stored in the artifact."""
    if shape is not None:
        return parse_shape(shape)
    from edgekd.exporters import ModelIO, read_metadata

    if path.suffix not in (".onnx", ".xml"):
        raise EdgekdError(f"--shape: '{path}' carries no input shape edgekd can read; give it as C,H,W")
    return ModelIO.from_metadata(read_metadata(path), f"artifact '{path}'").image_shape


def bench_artifact(
    path: Path,
    backend: str | None,
    shape: str | None,
    settings: LatencySettings,
    json_path: Path | None,
    device: str | None = None,
) -> dict[str, Any]:
    """Time one artifact file; ``device`` goes to its runner (None: the runner's default)."""
    from edgekd.bench import environment_record, measure_latency, runner_for

    if json_path is not None:
        check_writable_file(json_path, "--json")  # before the timing, not after it
    options: dict[str, Any] = {"threads": settings.threads}
    if device is not None:
        options["device"] = device
    runner = runner_for(path, backend, **options)
    image_shape = artifact_shape(path, shape)
    # A batch size given twice is timed once.
    config = settings.model_copy(update={"batches": list(dict.fromkeys(settings.batches))})
    check_input_memory(image_shape, max(config.batches), "--shape" if shape is not None else "ARTIFACT")
    latency = measure_latency(runner, image_shape, config).to_dict()
    result = {
        "artifact": str(path),
        "input_shape": list(image_shape),
        "runner": runner.describe(),
        "latency": latency,
        "environment": environment_record(settings.threads).to_dict(),
    }
    if json_path is not None:
        write_json(json_path, _jsonable(result))
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
