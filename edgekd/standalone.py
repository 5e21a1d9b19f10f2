"""`edgekd export` outside a build: of a run folder or a checkpoint (`edgekd bench`: bench/artifact_file.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import nn

from edgekd.config.deploy import ExportConfig
from edgekd.config.loading import load_recipe
from edgekd.config.models import DATA_MODEL_ARGS
from edgekd.deploy import deploy, parity_error
from edgekd.errors import EdgekdError
from edgekd.formats import FORMAT_PRECISIONS, formats_writing
from edgekd.layout import RunLayout
from edgekd.recipe import Recipe
from edgekd.records import ArtifactRecord, ModelRecord, RunMetrics

if TYPE_CHECKING:
    from edgekd.data import DataBundle


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


class LoadedStudent(NamedTuple):
    """A student to export: its recipe, the module with its weights, a file stem, its parameter count, and
    the recipe's student data (read once: it gives the classes, channels, calibration and parity images)."""

    recipe: Recipe
    student: nn.Module
    stem: str
    params: int
    data: DataBundle


def load_source(
    source: Path,
    recipe_path: Path | None,
    model: str | None,
    model_args: tuple[str, ...],
    overrides: tuple[str, ...],
) -> LoadedStudent:
    if source.is_dir():
        return _load_run(source, overrides)
    if source.suffix != ".pt" or not source.is_file():
        raise EdgekdError(
            f"SOURCE: '{source}' is neither a run folder (with {RunLayout(source).recipe.name}) nor a .pt checkpoint"
        )
    of_run = run_model_of(source) if model is None else None
    if of_run is not None:  # models/<name>.pt of a finished run: its architecture is in metrics.json
        run_dir, record = of_run
        recipe = load_recipe(recipe_path or RunLayout(run_dir).recipe, overrides)
        recipe = with_run_channels(recipe, RunMetrics.load(RunLayout(run_dir).metrics))
        return _load_student(source, recipe, record.arch, dict(record.model_args), "SOURCE")
    if recipe_path is None:
        raise EdgekdError(
            f"--recipe: required for a .pt SOURCE ('{source}') outside a run folder's models/: it gives the "
            "data and input shape"
        )
    from edgekd.prepare import with_teacher_channels

    recipe = with_teacher_channels(load_recipe(recipe_path, overrides))
    return _load_checkpoint(source, recipe, model, model_args)


def with_run_channels(recipe: Recipe, metrics: RunMetrics) -> Recipe:
    """The recipe with the channels its run fed (read from the teacher's checkpoint when data.channels was
    unset), so the students load as they were trained."""
    if recipe.data.channels is not None:
        return recipe
    channels = metrics.student_data.get("input_spec", {}).get("channels")
    if channels not in (1, 3):
        return recipe
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"channels": channels})})


def run_model_of(checkpoint: Path) -> tuple[Path, ModelRecord] | None:
    """The run folder and the student record of `checkpoint` when it is a finished run's
    models/<name>[_seed<k>].pt; None for any other file."""
    run_dir = checkpoint.parent.parent
    layout = RunLayout(run_dir)
    if checkpoint.parent.name != layout.models.name or not layout.metrics.is_file():
        return None
    for record in RunMetrics.load(layout.metrics).models:
        files = [record.checkpoint, *(seed.checkpoint for seed in record.per_seed)]
        if any(file is not None and Path(file).name == checkpoint.name for file in files):
            if record.role != "student":
                raise EdgekdError(
                    f"SOURCE: '{checkpoint}' is the run's {record.role}; edgekd export writes its students "
                    "(give one of models/<method>.pt)"
                )
            return run_dir, record
    return None


def _load_run(run_dir: Path, overrides: tuple[str, ...]) -> LoadedStudent:
    layout = RunLayout(run_dir)
    for path in (layout.recipe, layout.metrics):
        if not path.is_file():
            raise EdgekdError(f"SOURCE: '{run_dir}' has no {path.name}; give a finished edgekd run folder")
    metrics = RunMetrics.load(layout.metrics)
    recipe = with_run_channels(load_recipe(layout.recipe, overrides), metrics)
    shipped = metrics.deployed  # the student the run ships (export.models)
    loaded = _load_student(
        Path(shipped.checkpoint), recipe, shipped.arch, shipped.model_args, "student checkpoint"
    )
    return loaded._replace(stem=shipped.name, params=shipped.params)


def _student_data(recipe: Recipe) -> DataBundle:
    from edgekd.data import build_data

    return build_data(recipe.data, subset=True, normalize=recipe.normalization)


def _load_student(
    checkpoint: Path,
    recipe: Recipe,
    arch: str,
    args: dict[str, Any],
    what: str,
    data: DataBundle | None = None,
) -> LoadedStudent:
    """The recipe's student data gives the classes and channels; the weights must fit `arch`."""
    from edgekd.models import count_params, create_model
    from edgekd.train.checkpoint import load_weights

    data = data if data is not None else _student_data(recipe)
    try:
        student = create_model(arch, data.num_classes, data.input_spec.channels, **args)
    except EdgekdError as error:  # e.g. "model_args.bogus: not an option of 'resnet8'"
        raise EdgekdError(f"--model/--model-arg: {error}") from None
    load_weights(student, checkpoint, what, arch)
    return LoadedStudent(recipe, student, checkpoint.stem, count_params(student), data)


def _load_checkpoint(
    checkpoint: Path, recipe: Recipe, model: str | None, model_args: tuple[str, ...]
) -> LoadedStudent:
    """A .pt of the recipe's student (sized as the build sizes it), or of --model with --model-arg."""
    if model is not None:
        return _load_student(checkpoint, recipe, model, parse_model_args(model_args), "SOURCE")
    from edgekd.prepare import choose_student

    if recipe.latency_budget is not None:
        raise EdgekdError(
            "--model: required for a .pt SOURCE when the recipe sizes its student by latency (which member "
            "it chose depends on timings): give --model and --model-arg, or export the run folder"
        )
    data = _student_data(recipe)
    spec = data.input_spec
    choice = choose_student(recipe, data.num_classes, (spec.channels, spec.height, spec.width))
    return _load_student(checkpoint, recipe, choice.arch, choice.model_args, "SOURCE", data)


def parse_model_args(model_args: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    args = {}
    for item in model_args:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EdgekdError(f"--model-arg: {item!r} is not allowed; give KEY=VALUE, e.g. width=8")
        if key.strip() in DATA_MODEL_ARGS:
            raise EdgekdError(
                f"--model-arg: {key.strip()!r} is set by edgekd from {DATA_MODEL_ARGS[key.strip()]} of --recipe"
            )
        try:
            args[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise EdgekdError(f"--model-arg: {item!r}: the value is not readable as YAML") from None
    return args


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
    targets = export_targets(formats, precisions)
    loaded = load_source(source, recipe_path, model, model_args, overrides)
    export = ExportConfig(**{**loaded.recipe.export.model_dump(), "targets": targets})
    if output is None:
        output = RunLayout(source).artifacts if source.is_dir() else source.parent
    # Nothing is timed; the ONNX artifacts are checked where the recipe runs them (benchmark.onnxruntime_device).
    bench = loaded.recipe.benchmark.model_copy(update={"enabled": False})
    return deploy(
        loaded.student, loaded.params, loaded.data, export, bench, output, loaded.stem, say=say
    ).records


def check_parity(records: list[ArtifactRecord]) -> None:
    """ParityError (exit 1) naming every artifact outside its tolerance, once the table was shown."""
    error = parity_error(records, "table above")
    if error is not None:
        raise error
