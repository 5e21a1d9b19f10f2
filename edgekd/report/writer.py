"""Write a run's report from what the run folder keeps: report.md and report.html (one list of blocks,
report/sections.py, rendered twice), history.csv, bench.csv and the plots.

`edgekd build` writes it at the end of a run; `edgekd report RUN_DIR` writes it again from the folder's
metrics.json, history.json and recipe.yaml alone (rerender_report).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from edgekd.config.loading import load_recipe
from edgekd.errors import EdgekdError, RecipeError
from edgekd.fileio import read_json, write_text
from edgekd.layout import RunLayout
from edgekd.recipe import Recipe
from edgekd.records import RunMetrics
from edgekd.report import plots
from edgekd.report.blocks import Block, Code, Heading, Image, Paragraph, Table
from edgekd.report.markdown import render_markdown
from edgekd.report.sections import report_blocks
from edgekd.report.tables import BENCH_CSV_COLUMNS, bench_csv_rows
from edgekd.report.verdicts import verdicts
from edgekd.report.webpage import WebPage, render_html
from edgekd.runlock import run_folder_lock

ACCURACY_PLOT = "accuracy_vs_params.png"
CURVES_PLOT = "training_curves.png"
LATENCY_PLOT = "accuracy_vs_latency.png"
LOSS_PLOT = "loss_curves.png"
EMBEDDING_PLOT = "embedding_tsne.png"
STAGES_PLOT = "stages.png"
PROCESS_PLOT = "distillation_process.png"


def history_csv(histories: dict[str, list[dict[str, Any]]]) -> str:
    columns = [
        "model",
        *sorted(
            {key for rows in histories.values() for row in rows for key in row},
            key=lambda k: (k != "epoch", k),
        ),
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for name, rows in histories.items():
        for row in rows:
            writer.writerow({"model": name, **row})
    return out.getvalue()


def bench_csv(metrics: RunMetrics) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=BENCH_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(bench_csv_rows(metrics.artifacts))
    return out.getvalue()


def write_report(
    layout: RunLayout,
    recipe: Recipe,
    metrics: RunMetrics,
    histories: dict[str, list[dict]],
    embeddings: dict[str, tuple[Any, Any]] | None = None,
) -> tuple[Path, Path]:
    """Every report file of the run; returns the paths of report.md and report.html.

    `embeddings` None means they were not computed now (`edgekd report`): an embedding plot the build drew
    is kept."""
    write_text(layout.history_csv, history_csv(histories))
    write_text(layout.bench_csv, bench_csv(metrics))
    blocks = report_blocks(recipe, metrics, write_plots(layout, recipe, metrics, histories, embeddings))
    markdown = write_text(layout.report_md, render_markdown(blocks))
    page = write_text(layout.report_html, render_html(web_page(layout, metrics, blocks)))
    return markdown, page


def web_page(layout: RunLayout, metrics: RunMetrics, blocks: list[Block]) -> WebPage:
    images = {
        block.file: layout.plot(block.file).read_bytes() for block in blocks if isinstance(block, Image)
    }
    return WebPage(blocks, verdicts(metrics), appendix_blocks(layout, metrics), images)


def appendix_blocks(layout: RunLayout, metrics: RunMetrics) -> list[Block]:
    """What the web page adds to the report: the recipe as the run folder keeps it, and the environment."""
    return [
        Heading(2, "Recipe"),
        Paragraph("`recipe.yaml`: the resolved recipe that started the run, every default filled in."),
        Code(layout.recipe.read_text().rstrip("\n")),
        Heading(2, "Environment"),
        Paragraph("The machine and library versions every number of the run was measured with."),
        Table.of(["key", "value"], environment_rows(metrics.environment)),
    ]


def environment_rows(environment: dict[str, Any]) -> list[list[str]]:
    return [[key, environment_value(value)] for key, value in environment.items()]


def environment_value(value: Any) -> str:
    """'torch 2.5.1, onnx 1.17.0' for a mapping, 'avx2, fma' for a list, '-' for nothing."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{key} {environment_value(item)}" for key, item in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(environment_value(item) for item in value) or "-"
    return str(value)


def write_plots(
    layout: RunLayout,
    recipe: Recipe,
    metrics: RunMetrics,
    histories: dict[str, list[dict]],
    embeddings: dict[str, tuple[Any, Any]] | None,
) -> list[str]:
    """Draw the report's plots; their file names, in the order the report shows them."""
    if not recipe.report.plots:
        return []
    plots.accuracy_vs_params(metrics, layout.plot(ACCURACY_PLOT))
    plots.training_curves(histories, layout.plot(CURVES_PLOT))
    plot_files = [ACCURACY_PLOT, CURVES_PLOT]
    if plots.accuracy_vs_latency(metrics, layout.plot(LATENCY_PLOT)) is not None:
        plot_files.append(LATENCY_PLOT)
    if recipe.report.loss_curves and plots.loss_curves(histories, layout.plot(LOSS_PLOT)) is not None:
        plot_files.append(LOSS_PLOT)
    if plots.stage_curves(metrics, histories, layout.plot(STAGES_PLOT)) is not None:
        plot_files.append(STAGES_PLOT)
    if plots.process_curves(metrics, layout.plot(PROCESS_PLOT)) is not None:
        plot_files.append(PROCESS_PLOT)
    if embeddings:
        class_names = metrics.student_data["class_names"]
        plots.embedding_tsne(embeddings, class_names, recipe.seed, layout.plot(EMBEDDING_PLOT))
        plot_files.append(EMBEDDING_PLOT)
    elif embeddings is None and layout.plot(EMBEDDING_PLOT).is_file():
        plot_files.append(EMBEDDING_PLOT)  # drawn by the build; the features it shows are not stored
    return plot_files


# ------------------------------------------------------------------------------------ `edgekd report`
FINISHED_RUN = "allowed: a finished run folder of `edgekd build`"


def rerender_report(run_dir: Path) -> tuple[Path, Path]:
    """Write the report of a finished run again from its folder (after an edgekd update, or a deleted file);
    returns the paths of report.md and report.html."""
    layout = RunLayout(Path(run_dir))
    check_run_folder(layout)
    metrics = RunMetrics.load(layout.metrics)
    histories = read_histories(layout.history)
    recipe = stored_recipe(layout.recipe)
    # Not while a build (a --resume) writes the same files.
    with run_folder_lock(layout.root):
        try:
            written = write_report(layout, recipe, metrics, histories, embeddings=None)
            rewrite_deploy_guide(layout, metrics)
            return written
        except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
            # Each file read on its own terms, but they do not fit together (an edited history row, a model
            # missing from metrics.json): the folder is not a run this edgekd wrote. --debug shows where.
            if isinstance(exc, EdgekdError):
                raise
            raise EdgekdError(
                f"{layout.root}: its metrics.json, history.json and recipe.yaml do not fit together as one run "
                f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); {FINISHED_RUN}"
            ) from exc


def rewrite_deploy_guide(layout: RunLayout, metrics: RunMetrics) -> None:
    """DEPLOY.md again, where every artifact it describes is still in the folder (its metadata is read)."""
    from edgekd.deploy_guide import write_deploy_guide

    files = [Path(record.path) for record in metrics.artifacts if record.built and record.path]
    if all(path.is_file() for path in files):
        write_deploy_guide(layout, metrics.artifacts, metrics.shipped)


def stored_recipe(path: Path) -> Recipe:
    try:
        return load_recipe(path)
    except RecipeError as exc:
        if not exc.field:
            raise  # about the file itself, which the message names
        # A field's error names the field only. Paths (teacher.checkpoint, data.root) are checked again, from
        # the current folder: the file that moved since the build is what the user has to act on.
        raise EdgekdError(f"{path}: {exc}") from None


def check_run_folder(layout: RunLayout) -> None:
    root = layout.root
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise EdgekdError(f"{root}: {what}; {FINISHED_RUN}")
    for path in (layout.metrics, layout.history, layout.recipe):
        if not path.is_file():
            raise EdgekdError(f"{root}: no {path.name}; {FINISHED_RUN}")


def read_histories(path: Path) -> dict[str, list[dict[str, Any]]]:
    """history.json: per model, its per-epoch rows."""
    try:
        histories = read_json(path)
    except RecursionError:
        raise EdgekdError(
            f"{path}: nested too deeply to be a history.json of edgekd; {FINISHED_RUN}"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdgekdError(f"{path}: not valid JSON ({str(exc).splitlines()[0]}); {FINISHED_RUN}") from None
    if not isinstance(histories, dict) or not all(
        isinstance(rows, list) and all(isinstance(row, dict) for row in rows) for rows in histories.values()
    ):
        raise EdgekdError(f"{path}: not a history.json of edgekd (per model, a list of per-epoch rows)")
    return histories
