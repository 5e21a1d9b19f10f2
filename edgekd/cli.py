"""The `edgekd` command line."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from edgekd.errors import EdgekdError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

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
    """Bad input ends the command with one line on stderr and exit code 2 (a traceback only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return command(*args, **kwargs)
        except EdgekdError as exc:
            if debug:
                raise
            err.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            err.print(
                "[yellow]interrupted[/]: completed epochs are saved; run the same command with --resume to continue"
            )
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
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
@click.option("--quiet", is_flag=True, help="No progress bars (the summary table is still printed).")
@user_errors
def build(recipe: Path, overrides: tuple[str, ...], resume: bool, force: bool, quiet: bool) -> None:
    """Run RECIPE end to end: teacher, budget-sized student, distillation and baselines, report.

    Everything lands in <output_dir>/<name>/: recipe.yaml, models/*.pt, metrics.json, history.csv,
    report.md and plots.
    """
    from edgekd.pipeline import build as run_build
    from edgekd.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    if resume and force:
        raise EdgekdError("--resume and --force exclude each other")
    with make_progress(quiet) as progress:
        metrics = run_build(loaded, resume=resume, force=force, progress=progress)
    print_summary(metrics)
    out.print(f"run folder: {loaded.run_dir}  (report: {loaded.run_dir / 'report.md'})")


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
    from edgekd.recipe import dump_recipe, load_recipe

    loaded = load_recipe(recipe, overrides)
    if not schema_only:
        from edgekd.pipeline import prepare

        prepared = prepare(loaded)
        choice = prepared.student_choice
        out.print(
            f"student: {choice.arch} {choice.model_args or ''} — {choice.params:,} params, "
            f"{choice.flops:,} FLOPs per image ({choice.how})"
        )
    if explain:
        out.print(dump_recipe(loaded), end="")
    out.print(f"[green]ok[/]: {recipe} is a valid recipe")


@main.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of stdout.",
)
def schema(output: Path | None) -> None:
    """Print the recipe's JSON Schema: every field, its type, default and description."""
    from edgekd.recipe import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")


@main.command(name="list")
@click.argument("what", type=click.Choice(["methods", "models", "families", "datasets"]))
def list_things(what: str) -> None:
    """List the distillation methods, zoo models, budget families or data sets a recipe can name."""
    if what == "methods":
        from edgekd.distill.registry import get_method, method_names

        for name in method_names():
            out.print(f"{name:<10} {get_method(name).summary}")
    elif what == "models":
        from edgekd.models import available_models

        for name in available_models():
            out.print(name)
    elif what == "families":
        from edgekd.models import FAMILIES

        for name, members in FAMILIES.items():
            out.print(f"{name:<12} {len(members)} members")
    else:
        from edgekd.recipe import DataConfig

        out.print("\n".join(DataConfig.model_fields["dataset"].annotation.__args__))


# ---------------------------------------------------------------------------------------------- output
def make_progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )


def print_summary(metrics: dict) -> None:
    from edgekd.report.tables import SUMMARY_COLUMNS, summary_rows

    table = Table(title=f"edgekd run '{metrics['run']['name']}' ({metrics['run']['wall_time_s']:.1f} s)")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "architecture") else "right")
    for row in summary_rows(metrics):
        table.add_row(*row)
    # Piped into a log file, rich would squeeze the table into 80 columns and wrap every cell.
    console = out if out.is_terminal else Console(highlight=False, width=160)
    console.print(table)


if __name__ == "__main__":
    main()
