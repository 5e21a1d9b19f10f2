"""The `edgekd` command line."""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from edgekd.console import err, out, print_error, print_interrupted
from edgekd.errors import EXIT_INTERRUPTED, CheckFailed, EdgekdError
from edgekd.formats import BACKENDS, FORMATS, PRECISIONS
from edgekd.latency_settings import LatencyConfig, LatencySettings
from edgekd.launch import report_to_launcher, under_edgekd_launcher
from edgekd.layout import RunLayout
from edgekd.records import ArtifactRecord, RunMetrics


class FiniteSeconds(click.FloatRange):
    """Seconds within bounds: click's FloatRange lets nan through (every comparison with nan is false)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return number


# A list setting is one option given once per value, so its flag is singular.
LATENCY_FLAGS = {"batches": "--batch"}


def latency_options(command):
    """One `edgekd bench` option per LatencySettings field, its bounds, default and help read from the
    field's JSON schema: the command line times as a recipe's benchmark section and the library do."""
    properties = LatencySettings.model_json_schema()["properties"]
    for name, spec in reversed(properties.items()):  # click lists options in the reverse order of decoration
        flag = LATENCY_FLAGS.get(name, "--" + name.replace("_", "-"))
        command = click.option(flag, name, **latency_option(spec))(command)
    return command


def latency_option(spec: dict) -> dict:
    """click's settings for one field: a repeatable option for a list, a bounded number otherwise."""
    many = spec.get("type") == "array"
    value = spec["items"] if many else next(s for s in spec.get("anyOf", [spec]) if s["type"] != "null")
    bounds = {
        "min": value.get("minimum", value.get("exclusiveMinimum")),
        "max": value.get("maximum", value.get("exclusiveMaximum")),
        "min_open": "exclusiveMinimum" in value,
        "max_open": "exclusiveMaximum" in value,
    }
    # The settings' only non-integers are durations (warmup_s, min_time_s).
    kind = click.IntRange(**bounds) if value["type"] == "integer" else FiniteSeconds(**bounds)
    option = {
        "type": kind,
        "multiple": many,
        "help": spec["description"] + (" Repeat for several." if many else ""),
    }
    if spec.get("default") is not None:
        option.update(default=tuple(spec["default"]) if many else spec["default"], show_default=True)
    return option


def precision_help() -> str:
    """--precision's help: which formats write only some precisions ('onnx: fp32, int8'), if any do."""
    partial = [
        f"{fmt.name}: {', '.join(fmt.precisions)}" for fmt in FORMATS.values() if fmt.precisions != PRECISIONS
    ]
    if not partial:
        return "Every format writes each of them."
    return f"Each format writes those it supports ({'; '.join(partial)})."


def backends_by_suffix() -> str:
    """'.onnx onnxruntime, .xml openvino, ...': the runtime each format's files run on, for --backend's help."""
    return ", ".join(f"{'/'.join(fmt.suffixes)} {fmt.backend}" for fmt in FORMATS.values())


RECIPE_ARG = click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Override a recipe field, e.g. --set train.epochs=5 --set data.classes=[1,2]. The value is read as YAML. "
    "Repeatable.",
)


def user_errors(command):
    """Bad input ends the command with one line on stderr and exit code 2, a failed check with exit code 1
    (a traceback only with --debug). In a process of `edgekd build --nproc`, the launcher prints that line
    (edgekd/launch.py)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return command(*args, **kwargs)
        except EdgekdError as exc:
            if debug:
                raise
            exit_with(exc)
        except ModuleNotFoundError as exc:
            missing = missing_training_stack(exc)
            if debug or missing is None:
                raise
            exit_with(missing)
        except KeyboardInterrupt:
            if not under_edgekd_launcher():
                print_interrupted()
            sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            if debug or exc.errno not in FILE_SYSTEM_ERRORS:
                raise
            code = 1 if exc.errno in OUT_OF_SPACE else 2
            if not report_to_launcher(file_system_error(exc), code):
                print_error(file_system_error(exc))
            sys.exit(code)

    return wrapper


def exit_with(exc: EdgekdError) -> None:
    if not report_to_launcher(str(exc), exc.exit_code):
        print_error(str(exc))
    sys.exit(exc.exit_code)


# What `pip install edgekd` leaves out (the `train` extra brings it): the base install only benchmarks artifact
# files, so every other command imports one of these as it starts.
TRAINING_MODULES = frozenset({"torch", "torchvision", "nncf", "onnxscript", "matplotlib", "sklearn", "scipy"})


def missing_training_stack(exc: ModuleNotFoundError) -> EdgekdError | None:
    """The one-line error for a command run on the base install; None when the missing module is another."""
    module = (exc.name or "").partition(".")[0]
    if module not in TRAINING_MODULES:
        return None
    command = click.get_current_context().command_path
    return EdgekdError(
        f"{command}: needs the training stack, which is not installed (no module '{module}'); "
        "install it with: pip install 'edgekd[train]'"
    )


# Failures of the file system a user can act on (a path, a permission, a full disk): one line, not a traceback.
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
FILE_SYSTEM_ERRORS = OUT_OF_SPACE | {
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ELOOP,
    errno.EFBIG,
}


def file_system_error(exc: OSError) -> str:
    """`cannot write '<file>': No space left on device (...)`: what failed, where, and what to do."""
    where = f" '{exc.filename}'" if exc.filename else ""
    reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc))
    if exc.errno in OUT_OF_SPACE:
        return (
            f"cannot write{where}: {reason}; files already written are whole (each is written beside its place, "
            "then renamed): free some space and run the same command with --resume"
        )
    return (
        f"cannot use{where}: {reason}; allowed: a path edgekd can create and write (check output_dir and "
        "the paths given)"
    )


class OneLineUsageErrors(click.Group):
    """Command-line mistakes (an unknown --format, a missing argument) end like every other bad input: one
    line on stderr naming the option, what was given and what is allowed, and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            exit_code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "edgekd"
            err.print(
                f"[bold red]error:[/] {escape(f'{command}: {exc.format_message()} (see {command} --help)')}",
                soft_wrap=True,
            )
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            err.print("aborted")
            sys.exit(1)
        # Without standalone mode click returns the code of --help/--version exits instead of exiting.
        sys.exit(exit_code if isinstance(exit_code, int) else 0)


@click.group(
    cls=OneLineUsageErrors,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="edgekd")
def main(debug: bool) -> None:
    """edgekd: distil a big vision model into a small one for an edge device, and prove it with numbers.

    A recipe (YAML) states the whole run: data, teacher, student and its budget, distillation method and
    baselines, training. Start with `edgekd build recipes/quickstart.yaml`.
    """


@main.command()
@RECIPE_ARG
@SET_OPTION
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run in its folder: finished models are kept, "
    "an unfinished one continues after its last completed epoch.",
)
@click.option("--force", is_flag=True, help="Delete an existing run folder of the same name and start over.")
@click.option(
    "--seeds",
    metavar="0,1,2",
    help="Train every student once per seed and report mean ± std (same as --set seeds=[0,1,2]).",
)
@click.option("--quiet", is_flag=True, help="No progress bars (the summary tables are still printed).")
@click.option(
    "--strict-budget",
    is_flag=True,
    help="Fail the build (exit 1, after writing the report) when the deployed student is over its budget "
    "(parameters, or the latency measured on the shipped artifact).",
)
@click.option(
    "--nproc",
    type=click.IntRange(1, 1024),
    help="Train data-parallel in N processes on this machine: launches torchrun (one process per GPU, or "
    "gloo processes on the CPU); data.batch_size stays the global batch. For several machines run torchrun "
    "yourself (README, 'Many GPUs').",
)
@user_errors
def build(
    recipe: Path,
    overrides: tuple[str, ...],
    resume: bool,
    force: bool,
    seeds: str | None,
    quiet: bool,
    strict_budget: bool,
    nproc: int | None,
) -> None:
    """Run RECIPE end to end: teacher, budget-sized student, distillation and baselines, report.

    Everything lands in <output_dir>/<name>/: recipe.yaml, models/*.pt, metrics.json, history.csv,
    report.md, report.html and plots.
    """
    from edgekd.config.loading import load_recipe
    from edgekd.pipeline import build as run_build
    from edgekd.train.dist import launched_by_torchrun

    overrides = with_seeds(overrides, seeds)
    loaded = load_recipe(recipe, overrides)
    if resume and force:
        raise EdgekdError("--resume and --force exclude each other")
    if nproc is not None and not launched_by_torchrun():
        from edgekd.pipeline import check_parallel_build, sizing_progress

        # Bad input is refused here, once, before any process starts or anything trains.
        with make_progress(quiet) as progress:
            check_parallel_build(loaded, nproc, resume=resume, force=force, say=sizing_progress(progress))
        launch_torchrun(nproc, sys.argv[1:])
    worker = launched_by_torchrun() and os.environ.get("RANK", "0") != "0"
    try:
        with make_progress(quiet or worker) as progress:
            metrics = run_build(
                loaded, resume=resume, force=force, progress=progress, strict_budget=strict_budget
            )
    except CheckFailed as failed:  # parity or --strict-budget: the results are written; show them first
        if failed.results is not None and not worker:
            print_results(failed.results, loaded.run_dir)
        raise
    if metrics is None or worker:
        return  # a torchrun process other than rank 0: rank 0 prints the summary
    print_results(metrics, loaded.run_dir)


def print_results(metrics: RunMetrics, run_dir: Path) -> None:
    """The summary tables and where the run folder, report and web page are."""
    print_summary(metrics)
    layout = RunLayout(run_dir)
    # Paths are data: a [bracket] in output_dir is not markup.
    out.print(
        escape(
            f"run folder: {run_dir}  (report: {layout.report_md}, web page: {layout.report_html}, "
            f"how to deploy: {layout.deploy_md})"
        ),
        soft_wrap=True,
    )


@main.command()
@RECIPE_ARG
@SET_OPTION
@click.option("--explain", is_flag=True, help="Print the resolved recipe, every default filled in.")
@click.option(
    "--schema-only",
    is_flag=True,
    help="Check only the recipe's fields; do not read the data, fit the "
    "budget or load the teacher checkpoint.",
)
@user_errors
def validate(recipe: Path, overrides: tuple[str, ...], explain: bool, schema_only: bool) -> None:
    """Check RECIPE without training: fields, data, budget fit and teacher checkpoint."""
    from edgekd.config.loading import dump_recipe, load_recipe
    from edgekd.runfolder import refuse_foreign_folder

    loaded = load_recipe(recipe, overrides)
    refuse_foreign_folder(loaded.run_dir)
    if not schema_only:
        from edgekd.pipeline import prepare, sizing_progress

        with make_progress(quiet=False) as progress:  # a latency budget times its family here
            prepared = prepare(loaded, say=sizing_progress(progress))
        from edgekd.data.describe import input_lines

        channels_from_teacher = loaded.data.channels is None and prepared.recipe.data.channels is not None
        for line in input_lines(prepared.recipe, prepared.data_plan, channels_from_teacher):
            out.print(escape(line), soft_wrap=True)
        choice = prepared.student_choice
        if choice.sizing is not None:
            print_sizing(choice.sizing)
        out.print(
            f"student: {choice.arch} {choice.model_args or ''} — {choice.params:,} params, "
            f"{choice.flops:,} FLOPs per image ({choice.how})"
        )
        print_epoch_budget(loaded)
    if explain:
        out.print(dump_recipe(loaded), end="")
    out.print(f"[green]ok[/]: {escape(str(recipe))} is a valid recipe", soft_wrap=True)


@main.command()
@RECIPE_ARG
@SET_OPTION
@click.option(
    "--budget",
    "budgets",
    required=True,
    multiple=True,
    metavar="KIND=V1,V2",
    help="The budgets to build for: latency=0.5ms,1ms,2ms (the recipe's latency target, another limit) or "
    "params=50k,100k. Repeatable: several --budget options sweep the union of their budgets, in the order "
    "given; one budget named twice, in any spelling (0.5ms and 500us), is an error.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Build every run again. Without it a finished run is reused only when it was built from exactly the "
    "recipe (and --set values) it would run now; one built from another recipe is an error.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def sweep(
    recipe: Path, overrides: tuple[str, ...], budgets: tuple[str, ...], force: bool, quiet: bool
) -> None:
    """Build RECIPE once per budget (sharing the teacher) and map accuracy against measured latency.

    Writes <output_dir>/<name>_sweep/: one run folder per budget, named by its value (latency-0.2ms,
    params-70k), sweep.json/csv/md and frontier.png (every artifact's test accuracy against its latency, the
    Pareto frontier marked).
    """
    from edgekd.sweep import run_sweep

    with make_progress(quiet) as progress:
        result = run_sweep(recipe, overrides, budgets, force=force, progress=progress)
    columns = ["budget", "student", "artifact", "val acc %", "test acc %", "latency ms", "fits", "frontier"]
    rows = [
        [
            point["budget"],
            point["student"],
            point["artifact"],
            f"{point['val_acc']:.2f}",
            f"{point['test_acc']:.2f}",
            f"{point['latency_ms']:.4g}",
            "-" if point["fits"] is None else "yes" if point["fits"] else "OVER",
            "*" if point["pareto"] else "",
        ]
        for point in result["points"]
    ]
    console = table_console()
    console.print(
        rich_table("accuracy against latency", columns, rows, left=("budget", "student", "artifact"))
    )
    console.print(
        escape(f"written: {result['folder']}/sweep.md, sweep.json, sweep.csv, frontier.png"), soft_wrap=True
    )


@main.command(name="latency-table")
@RECIPE_ARG
@SET_OPTION
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for the table's CSV and JSON [default: <output_dir>/latency_tables].",
)
@click.option("--refresh", is_flag=True, help="Time every member again instead of reading the cache.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@user_errors
def latency_table_command(
    recipe: Path, overrides: tuple[str, ...], out: Path | None, refresh: bool, quiet: bool
) -> None:
    """Time every member of RECIPE's student family on its latency budget's runtime, and save the table.

    Run it on the target device: the table (CSV and JSON) says which member fits which limit there, and the
    cache it fills lets a build on that machine size its student without timing again.
    """
    from edgekd.config.loading import load_recipe
    from edgekd.sizing.table import write_latency_table

    loaded = load_recipe(recipe, overrides)
    with make_progress(quiet) as progress:
        table, paths = write_latency_table(loaded, out, progress, refresh=refresh)
    print_sizing(table)
    out_console = table_console()
    out_console.print(escape("written: " + ", ".join(str(path) for path in paths)), soft_wrap=True)


@main.command()
@RECIPE_ARG
@SET_OPTION
@click.option(
    "--grid",
    "grid",
    multiple=True,
    required=True,
    metavar="FIELD=V1,V2",
    help="A distill.* or train.* field and the values to try, e.g. distill.skd.fm_scale=0.01,0.1,1; repeat for "
    "a grid over several fields.",
)
@click.option("--method", help="The method (or variant) to train [default: the recipe's main method].")
@click.option("--seeds", metavar="0,1,2", help="Seeds of every variant (same as --set seeds=[0,1,2]).")
@click.option(
    "--force", is_flag=True, help="Start the tuning folder over instead of reusing finished students."
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def tune(
    recipe: Path,
    overrides: tuple[str, ...],
    grid: tuple[str, ...],
    method: str | None,
    seeds: str | None,
    force: bool,
    quiet: bool,
) -> None:
    """Compare variants of RECIPE on validation accuracy (the test split is never evaluated).

    Trains the method for every grid point and seed with the recipe's teacher and data, and prints the
    validation accuracy (mean ± std over seeds) with the paired difference to the first variant. Choose a
    recipe value here, then say in the recipe's comment that it was chosen on validation.
    """
    from edgekd.config.loading import load_recipe
    from edgekd.tune import parse_grid
    from edgekd.tune import tune as run_tune

    overrides = with_seeds(overrides, seeds)
    loaded = load_recipe(recipe, overrides)
    axes = [parse_grid(text) for text in grid]
    with make_progress(quiet) as progress:
        result = run_tune(loaded, axes, method, force=force, progress=progress)
    print_tune(result)


def print_tune(result: dict) -> None:
    from edgekd.report.stats import difference_cell

    console = table_console()
    title = (
        f"'{result['method']}' variants on validation accuracy, seeds {', '.join(map(str, result['seeds']))} "
        "(test never evaluated)"
    )
    columns = ["variant", "val acc %", "val loss", "Δ val acc vs first [CI]", "per seed"]
    rows = []
    for row in result["variants"]:
        if row.get("diverged"):
            rows.append([row["label"], "diverged", "-", "-", row["diverged"]])
            continue
        std = "" if row["val_acc_std"] is None else f" ± {row['val_acc_std']:.2f}"
        mark = " (best)" if row["label"] == result["best"] else ""
        rows.append(
            [
                row["label"] + mark,
                f"{row['val_acc']:.2f}{std}",
                f"{row['val_loss']:.4f}",
                difference_cell(row.get("paired_vs_first")) if row.get("paired_vs_first") else "reference",
                ", ".join(f"{run['val_acc']:.1f}" for run in row["per_seed"].values()),
            ]
        )
    console.print(rich_table(title, columns, rows, left=("variant",)))
    console.print(escape(f"written: {result['path']}"), soft_wrap=True)


@main.command(name="export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "formats",
    multiple=True,
    required=True,
    type=click.Choice(list(FORMATS)),
    help="Deployment format; repeat for several.",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    default=("fp32",),
    show_default=True,
    type=click.Choice(list(PRECISIONS)),
    help=f"Precision; repeat for several. {precision_help()}",
)
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="For a .pt SOURCE: the recipe whose data section gives the input size, normalization, class "
    "names and calibration images (and whose student section the architecture, unless --model).",
)
@click.option("--model", help="For a .pt SOURCE: the zoo architecture of the checkpoint, e.g. resnet8.")
@click.option(
    "--model-arg",
    "model_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="For a .pt SOURCE: a constructor option of --model, e.g. width=8; repeat for several.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the artifacts [default: SOURCE/artifacts for a run folder, else next to the .pt].",
)
@SET_OPTION
@user_errors
def export_command(
    source: Path,
    formats: tuple[str, ...],
    precisions: tuple[str, ...],
    recipe_path: Path | None,
    model: str | None,
    model_args: tuple[str, ...],
    output: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Export SOURCE (a run folder, or a .pt state_dict) and check every artifact's parity against PyTorch.

    Calibration (INT8) and parity use real images of the recipe's data. `--set export.opset=17` and other
    `export.*` fields of the recipe apply. Exit code 1 when an artifact fails its parity check.
    """
    from edgekd.standalone import check_parity, export_source

    records = export_source(
        source, formats, precisions, recipe_path, model, model_args, output, overrides, say=err.print
    )
    print_artifacts(records, "exported artifacts")
    check_parity(records)


@main.command(name="bench")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(list(BACKENDS)),
    help=f"Runtime [default: from the suffix: {backends_by_suffix()}].",
)
@click.option("--shape", metavar="C,H,W", help="Input image shape, for files without edgekd metadata.")
@click.option(
    "--device",
    help="Where the runtime runs it [default: the runtime's own: cpu, tensorrt cuda]; onnxruntime: cpu or cuda "
    "(its CUDA execution provider, from onnxruntime-gpu).",
)
@latency_options
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the results (with the environment record) to this JSON file.",
)
@user_errors
def bench_command(
    artifact: Path,
    backend: str | None,
    shape: str | None,
    device: str | None,
    json_path: Path | None,
    **latency,
) -> None:
    """Time ARTIFACT (.onnx, .xml or .engine) on this machine: cold start, p50/p90/p99, throughput.

    Run it on the target device to see the latency there; the inputs are random images of the model's
    input shape (latency does not depend on their values).
    """
    from edgekd.bench.artifact_file import bench_artifact

    result = bench_artifact(artifact, backend, shape, LatencyConfig(**latency), json_path, device)
    print_latency(result)


@main.command(name="report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@user_errors
def report_command(run_dir: Path) -> None:
    """Write the report of the finished run in RUN_DIR again: report.md, report.html, the CSVs, the plots and
    DEPLOY.md (where the artifacts are still there).

    Reads only the folder's metrics.json, history.json and recipe.yaml (nothing is trained or measured);
    an embedding plot the build drew is kept, since the features it shows are not stored.
    """
    from edgekd.report.writer import rerender_report

    markdown, page = rerender_report(run_dir)
    # Paths are data (a [bracket] is not markup) and stay on one line each, whatever the terminal's width.
    out.print(f"report: {escape(str(markdown))}", soft_wrap=True)
    out.print(f"web page: {escape(str(page))}", soft_wrap=True)


@main.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of stdout.",
)
@user_errors
def schema(output: Path | None) -> None:
    """Print the recipe's JSON Schema: every field, its type, default and description."""
    from edgekd.config.loading import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")


@main.command(name="list")
@click.argument("what", type=click.Choice(["methods", "models", "families", "datasets", "backends"]))
@user_errors
def list_things(what: str) -> None:
    """List the distillation methods, zoo models, budget families, data sets or deployment backends a recipe
    can name."""
    if what == "methods":
        print_methods()
    elif what == "backends":
        print_backends()
    elif what == "models":
        from edgekd.models import available_models

        for name in available_models():
            out.print(escape(name))
        out.print("\nstudent families (student.family, sized to student.budget):")
        print_families()
    elif what == "families":
        print_families()
    else:
        from edgekd.config.data import DataConfig

        out.print("\n".join(DataConfig.model_fields["dataset"].annotation.__args__))


def print_backends() -> None:
    """Each backend of the catalog: its format and runtime, precisions, suffixes, how to install its runtime
    and whether its artifacts run here (its packages are looked up, not imported)."""
    for fmt in FORMATS.values():
        here = "available here" if fmt.available else f"not installed here ({', '.join(fmt.missing)})"
        line = (
            f"{fmt.name:<10} runtime {fmt.runtime:<12} {', '.join(fmt.precisions):<17} "
            f"{'/'.join(fmt.suffixes):<13} {fmt.install}; {here}"
        )
        out.print(escape(line), soft_wrap=True)  # "edgekd[tensorrt]" is not markup
        out.print(f"{'':<10} {escape(fmt.description)}", soft_wrap=True)


def print_families() -> None:
    """Each budget family: its member count and its size grid (timm's variants named one by one)."""
    from edgekd.models import FAMILIES, family_members
    from edgekd.models.budget import describe_grid

    for name in FAMILIES:
        out.print(f"{name:<22} {len(family_members(name))} members")
        for line in describe_grid(name):
            out.print(f"{'':<22} {escape(line)}", soft_wrap=True)


def print_methods() -> None:
    """Each method: what it does, its stages and the label relations it supports (with default options)."""
    from edgekd.config.train import TrainConfig
    from edgekd.distill.plan import describe_plan
    from edgekd.distill.registry import get_method, method_names

    train = TrainConfig()
    for name in method_names():
        entry = get_method(name)
        options = entry.options()
        out.print(f"{name:<10} {escape(entry.summary)}", soft_wrap=True)
        out.print(f"{'':<10} stages: {escape(describe_plan(entry.plan(options, train)))}", soft_wrap=True)
        relations = ", ".join(
            r for r in ("same", "subset", "disjoint") if r in entry.supported_relations(options)
        )
        out.print(f"{'':<10} label relations: {relations}", soft_wrap=True)


def with_seeds(overrides: tuple[str, ...], seeds: str | None) -> tuple[str, ...]:
    """--seeds 0,1,2 as the override seeds=[0, 1, 2], after the --set ones."""
    return overrides if seeds is None else (*overrides, f"seeds=[{parse_seeds(seeds)}]")


def parse_seeds(text: str) -> str:
    parts = [part.strip() for part in text.split(",")]
    if not parts or not all(part.lstrip("-").isdigit() for part in parts):
        raise EdgekdError(
            f"--seeds: {text!r} is not allowed; give whole numbers separated by commas, e.g. 0,1,2"
        )
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- output
def table_console() -> Console:
    """Where tables go: the terminal, or a wide console when piped into a log file (rich would otherwise
    squeeze them into 80 columns and wrap every cell)."""
    return out if out.is_terminal else Console(highlight=False, width=180)


class LazyProgress(Progress):
    """Draws nothing until its first task: a build refused before training (a busy run folder, a late
    check) leaves only its one-line error, not an empty progress line above it."""

    def start(self) -> None:
        pass  # __enter__ calls this; drawing starts at the first task

    def add_task(self, *args, **kwargs):
        if not self.live.is_started:
            super().start()
        return super().add_task(*args, **kwargs)

    def stop(self) -> None:
        if self.live.is_started:  # rich's stop prints a newline on a non-terminal even when nothing was drawn
            super().stop()


def launch_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process by edgekd's launcher (edgekd/launch.py: torchrun's, in-process) running the same
    `edgekd` command in `nproc` processes (one machine, its own rendezvous). Replacing rather than spawning
    it means killing this process kills the launcher, whose processes then die with it
    (edgekd.train.dist.die_with_parent), and frees what the checks before it held."""
    command = [sys.executable, "-m", "edgekd.launch", str(nproc), *without_option(argv, "--nproc")]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def without_option(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag VALUE` / `flag=VALUE`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept


def make_progress(quiet: bool) -> Progress:
    return LazyProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )


def print_summary(metrics: RunMetrics) -> None:
    from edgekd.bench.machine_load import artifacts_load_warning
    from edgekd.report.int8 import summary_line as int8_summary_line
    from edgekd.report.tables import (
        DATA_COLUMNS,
        data_rows,
        deployment_table,
        summary_columns,
        summary_rows,
    )
    from edgekd.report.verdicts import budget_verdict

    console = table_console()
    title = f"edgekd run '{metrics.run.name}' ({metrics.run.wall_time_s:.1f} s)"
    columns = summary_columns(metrics)
    console.print(rich_table(title, columns, summary_rows(metrics), left=("model", "architecture")))
    console.print(rich_table("what each model used", DATA_COLUMNS, data_rows(metrics), left=("model",)))
    # The report's deployment section, the same table: none when nothing was exported or timed.
    deployment = deployment_table(metrics)
    if deployment is not None:
        left = ("artifact", "model", "runs on", "parity")
        title = deployment.title[0].lower() + deployment.title[1:]
        console.print(rich_table(title, deployment.columns, deployment.rows, left=left))
    print_busy_warning(console, artifacts_load_warning(metrics.artifacts))
    verdict = budget_verdict(metrics.budget_check)
    colour = {"pass": "green", "fail": "red", "neutral": "yellow"}[verdict.state]
    for line in verdict.details if metrics.budget_check is not None else ():
        console.print(f"[{colour}]budget {escape(line)}[/]")
    for record in metrics.int8:
        console.print(escape(int8_summary_line(metrics, record)), soft_wrap=True)
    print_shipping(console, metrics)


def print_shipping(console: Console, metrics: RunMetrics) -> None:
    """Which student ships and why, the warnings about it, and the path of every deployable file."""
    from edgekd.report.tables import artifact_paths

    for warning in metrics.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if metrics.shipped is not None:
        console.print(
            f"ship: {escape(metrics.shipped.model)} ({escape(metrics.shipped.reason)})", soft_wrap=True
        )
    for what, path in artifact_paths(metrics):
        console.print(f"  {escape(what)}: {escape(path)}", soft_wrap=True)


def print_epoch_budget(recipe) -> None:
    """How each method spends train.epochs over the stages of its plan (and distill.stages' changes)."""
    from edgekd.prepare import named_methods
    from edgekd.train.stages import describe_epochs, planned_epochs

    out.print(f"epochs per method (train.epochs: {recipe.train.epochs}, per seed):")
    for _, method in named_methods(recipe):
        out.print(f"  {method:<12} {escape(describe_epochs(planned_epochs(recipe, method)))}", soft_wrap=True)
    int8 = recipe.export.int8
    if int8.trains and recipe.export.wants_int8:
        when = "only if PTQ fails the gate on validation, " if int8.mode == "auto" else ""
        out.print(
            f"  then, for each deployed student, export.int8 ({int8.mode}): {when}{int8.epochs} epochs of "
            "quantization-aware training (first seed's student)",
            soft_wrap=True,
        )


def print_sizing(sizing) -> None:
    """The candidate table of a latency budget and how the choice was made (the report's section)."""
    from edgekd.report.sections import sizing_blocks

    _, intro, table = sizing_blocks(sizing)
    console = table_console()
    title = "student sizing: the latency budget's candidates"
    console.print(rich_table(title, table.columns, table.rows, left=("member", "source", "note")))
    console.print(escape(intro.text.replace("`", "")))


def print_artifacts(records: list[ArtifactRecord], title: str) -> None:
    from edgekd.report.tables import ARTIFACT_COLUMNS, artifact_rows

    console = table_console()
    console.print(
        rich_table(title, ARTIFACT_COLUMNS, artifact_rows(records), left=("artifact", "runs on", "parity"))
    )
    for record in records:
        if record.path:
            console.print(escape(f"{record.name}: {record.path}"), soft_wrap=True)


def print_latency(result: dict) -> None:
    from edgekd.bench.machine_load import load_warning
    from edgekd.report.tables import latency_table_rows

    console = table_console()
    columns = ["batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "img/s", "iters"]
    runner = result["runner"]
    where = runner.get("runs_on", runner["backend"])
    title = f"{result['artifact']} on {where} (threads {result['latency']['threads']})"
    console.print(rich_table(title, columns, latency_table_rows(result["latency"]), left=()))
    cold = result["latency"]["cold_start"]
    console.print(
        f"cold start: load {cold['load_ms']:.1f} ms + first inference {cold['first_inference_ms']:.2f} ms"
    )
    print_busy_warning(console, load_warning([result["latency"].get("machine_load")]))


def print_busy_warning(console: Console, warning: str | None) -> None:
    """The machine-load warning of latency results (bench/machine_load.py), when there is one."""
    if warning:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def rich_table(title: str, columns: list[str], rows: list[list[str]], left: tuple[str, ...]) -> Table:
    """A table whose title and cells are data: a [bracket] in a path or name is shown, not read as markup."""
    table = Table(title=escape(title))
    for column in columns:
        table.add_column(escape(column), justify="left" if column in left else "right")
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    return table


if __name__ == "__main__":
    main()
