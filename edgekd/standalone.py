"""`edgekd export` and `edgekd bench` outside a build: on a run folder, a checkpoint, or any artifact file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.fileio import write_json
from edgekd.formats import FORMAT_PRECISIONS, formats_writing
from edgekd.latency_settings import LatencySettings
from edgekd.layout import RunLayout
from edgekd.recipe import ExportConfig, Recipe, load_recipe
from edgekd.records import ArtifactRecord, RunMetrics


# ----------------------------------------------------------------------------------------------- export
def export_targets(formats: tuple[str, ...], precisions: tuple[str, ...]) -> dict[str, list[str]]:
    """Each format with the asked precisions it writes; a precision no asked format writes is an error."""
    targets = {fmt: [p for p in precisions if p in FORMAT_PRECISIONS[fmt]] for fmt in dict.fromkeys(formats)}
    for precision in precisions:
        if not any(precision in chosen for chosen in targets.values()):
            raise EdgekdError(
                f"--precision: {precision} is not written by {', '.join(targets)} "
                f"(formats that write it: {', '.join(formats_writing(precision))})"
            )
    return {fmt: chosen for fmt, chosen in targets.items() if chosen}


def load_source(
    source: Path,
    recipe_path: Path | None,
    model: str | None,
    model_args: tuple[str, ...],
    overrides: tuple[str, ...],
) -> tuple[Recipe, nn.Module, str, int]:
    """The recipe, the student with its weights, a file stem, and the student's parameter count."""
    if source.is_dir():
        return _load_run(source, overrides)
    if source.suffix != ".pt" or not source.is_file():
        raise EdgekdError(
            f"SOURCE: '{source}' is neither a run folder (with {RunLayout(source).recipe.name}) nor a .pt checkpoint"
        )
    if recipe_path is None:
        raise EdgekdError(
            f"--recipe: required for a .pt SOURCE ('{source}'): it gives the data and input shape"
        )
    return _load_checkpoint(source, load_recipe(recipe_path, overrides), model, model_args)


def _load_run(run_dir: Path, overrides: tuple[str, ...]) -> tuple[Recipe, nn.Module, str, int]:
    from edgekd.models import create_model
    from edgekd.train.checkpoint import load_weights

    layout = RunLayout(run_dir)
    for path in (layout.recipe, layout.metrics):
        if not path.is_file():
            raise EdgekdError(f"SOURCE: '{run_dir}' has no {path.name}; give a finished edgekd run folder")
    recipe = load_recipe(layout.recipe, overrides)
    metrics = RunMetrics.load(layout.metrics)
    main, data = metrics.main, metrics.student_data
    student = create_model(main.arch, data["num_classes"], data["input_spec"]["channels"], **main.model_args)
    load_weights(student, Path(main.checkpoint), "student checkpoint", main.arch)
    return recipe, student, main.name, main.params


def _load_checkpoint(
    checkpoint: Path, recipe: Recipe, model: str | None, model_args: tuple[str, ...]
) -> tuple[Recipe, nn.Module, str, int]:
    import yaml

    from edgekd.data import build_data
    from edgekd.models import count_params, create_model
    from edgekd.pipeline import choose_student
    from edgekd.train.checkpoint import load_weights

    data = build_data(recipe.data, subset=True)
    if model is None:
        spec = data.input_spec
        choice = choose_student(recipe, data.num_classes, (spec.channels, spec.height, spec.width))
        model, args = choice.arch, choice.model_args
    else:
        args = {}
        for item in model_args:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise EdgekdError(f"--model-arg: {item!r} is not allowed; give KEY=VALUE, e.g. width=8")
            args[key.strip()] = yaml.safe_load(value)
    student = create_model(model, data.num_classes, data.input_spec.channels, **args)
    load_weights(student, checkpoint, "SOURCE", model)
    return recipe, student, checkpoint.stem, count_params(student)


def export_source(
    source: Path,
    formats: tuple[str, ...],
    precisions: tuple[str, ...],
    recipe_path: Path | None,
    model: str | None,
    model_args: tuple[str, ...],
    output: Path | None,
    overrides: tuple[str, ...],
    say=None,
) -> list[ArtifactRecord]:
    from edgekd.bench import ParityError
    from edgekd.data import build_data
    from edgekd.deploy import deploy, parity_failures

    targets = export_targets(formats, precisions)
    recipe, student, stem, params = load_source(source, recipe_path, model, model_args, overrides)
    export = ExportConfig(**{**recipe.export.model_dump(), "targets": targets})
    if output is None:
        output = RunLayout(source).artifacts if source.is_dir() else source.parent
    data = build_data(recipe.data, subset=True)
    # Nothing is timed; the ONNX artifacts are checked where the recipe runs them (benchmark.onnxruntime_device).
    bench = recipe.benchmark.model_copy(update={"enabled": False})
    records = deploy(student, params, data, export, bench, output, stem, say=say)
    failures = parity_failures(records)
    if failures:
        raise ParityError(f"parity: {len(failures)} artifact(s) outside tolerance: " + "; ".join(failures))
    return records


# ------------------------------------------------------------------------------------------------ bench
def parse_shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise EdgekdError(f"--shape: {text!r} is not allowed; give C,H,W as three positive whole numbers")
    channels, height, width = (int(part) for part in parts)
    return channels, height, width


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

    options: dict[str, Any] = {"threads": settings.threads}
    if device is not None:
        options["device"] = device
    runner = runner_for(path, backend, **options)
    image_shape = artifact_shape(path, shape)
    # A batch size given twice is timed once.
    config = settings.model_copy(update={"batches": list(dict.fromkeys(settings.batches))})
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
