"""The report tells the truth on every run (#25): the seeds of a multi-seed run, a Protocol text that says
what the "What each model used" table says, no artifacts table when nothing was exported, a loaded teacher's
training images as not known (or as the recipe states them), the teacher's accuracy labelled with its
classes, each stage drawn with its own selection metric, and a distinct style for every line.

Two tiny real builds of the digits data, each shared by the tests of its module-scoped fixture: a
cross-task run over three seeds (a teacher of digits 0-4, students of 5-9, nothing exported, plots on) and a
run whose teacher is loaded from the first run's checkpoint (nothing exported, the PyTorch student timed).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import yaml
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.fileio import read_json
from edgekd.layout import RunLayout
from edgekd.records import RunMetrics
from edgekd.report.plots import line_styles, training_curves_figure
from edgekd.report.tables import DATA_COLUMNS, data_rows, deployed_student, summary_rows

pytestmark = pytest.mark.slow

TINY_NET = {"model": "resnet8", "model_args": {"width": 8}}
SEEDS = [0, 1, 2]
# Four methods over three seeds and the teacher: 13 lines, more than matplotlib's 10-colour cycle.
CROSSTASK = {
    "seeds": SEEDS,
    "data": {
        "dataset": "digits",
        "classes": [5, 6, 7, 8, 9],
        "per_class": 5,
        "val_per_class": 3,
        "batch_size": 16,
    },
    "teacher": {**TINY_NET, "classes": [0, 1, 2, 3, 4], "train": {"epochs": 2, "optimizer": {"lr": 0.1}}},
    "student": TINY_NET,
    "distill": {"method": "refilled", "baselines": ["scratch", "rkd_ft", "finetune"]},
    "train": {"epochs": 2, "optimizer": {"lr": 0.1}},
    "export": {"targets": {}},
    "benchmark": {"enabled": False},
    "report": {"plots": True, "reference": "scratch"},
}


def build(root: Path, name: str, recipe: dict) -> tuple[RunLayout, RunMetrics, str]:
    """`edgekd build` as a user runs it; the run's layout, metrics and what the CLI printed."""
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "output_dir": str(root), **recipe}))
    result = CliRunner().invoke(main, ["build", str(path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    layout = RunLayout(root / name)
    return layout, RunMetrics.load(layout.metrics), result.output


@pytest.fixture(scope="module")
def crosstask(tmp_path_factory):
    return build(tmp_path_factory.mktemp("crosstask"), "crosstask", CROSSTASK)


@pytest.fixture(scope="module")
def loaded(crosstask, tmp_path_factory):
    """A teacher of digits 0-4 loaded from the cross-task run's checkpoint, a student of digits 3 and 4 (two
    of the teacher's classes: whether the teacher trained on the student's images is not the run's to know),
    nothing exported, the PyTorch student timed."""
    layout, _, _ = crosstask
    recipe = {
        "data": {"dataset": "digits", "classes": [3, 4], "per_class": 5, "batch_size": 16},
        "teacher": {
            **TINY_NET,
            "classes": [0, 1, 2, 3, 4],
            "checkpoint": str(layout.model_weights("teacher")),
        },
        "student": TINY_NET,
        "distill": {"method": "kd", "baselines": []},
        "train": {"epochs": 1},
        "export": {"targets": {}},
        "benchmark": {"batches": [1], "warmup_iters": 1, "warmup_s": 0, "min_iters": 2, "min_time_s": 0},
        "report": {"plots": False},
    }
    return build(tmp_path_factory.mktemp("loaded"), "loaded", recipe)


def report_of(layout: RunLayout) -> str:
    return layout.report_md.read_text()


def section(report: str, heading: str) -> str:
    """The text of a report section, from its heading to the next heading."""
    start = report.index(heading)
    following = re.search(r"^#", report[start + len(heading) :], flags=re.MULTILINE)
    return report[start : start + len(heading) + (following.start() if following else len(report))]


def used_rows(metrics: RunMetrics) -> dict[str, dict[str, str]]:
    return {row[0]: dict(zip(DATA_COLUMNS, row, strict=True)) for row in data_rows(metrics)}


# ------------------------------------------------------------------------------------------ the seeds
def test_a_multi_seed_report_names_every_seed(crosstask):
    layout, _, _ = crosstask
    overview = section(report_of(layout), "# edgekd run")
    assert "seeds 0, 1, 2 (every student once per seed; the teacher trained once with seed 0)" in overview
    assert "seed 0," not in overview


# --------------------------------------------------------------------------------- protocol = table
def test_the_protocol_says_what_the_used_data_table_says(crosstask):
    """Cross-task: the student's images are of classes the teacher never trained on, in both places."""
    layout, metrics, _ = crosstask
    protocol = section(report_of(layout), "### Protocol")
    assert "the teacher's own training images" not in protocol
    assert "of classes the teacher was not trained on (its classes: 0, 1, 2, 3, 4)" in protocol
    assert "the teacher never trained on them" in protocol
    rows = used_rows(metrics)
    assert rows["refilled (main)"]["teacher trained on the student's images"] == "no"
    assert rows["scratch"]["teacher trained on the student's images"] == "-"  # it learns from no teacher


# ------------------------------------------------------------------------------------ export off
def test_nothing_exported_and_nothing_timed_shows_no_deployment_table(crosstask):
    layout, _, output = crosstask
    report = report_of(layout)
    assert "Deployment artifacts" not in report and "pytorch fp32" not in report
    assert "Latency of the PyTorch student" not in report
    assert "`artifacts/`" not in report and not layout.artifacts.exists()
    assert "deployment artifacts" not in output and "pytorch fp32" not in output  # the CLI's summary too


def test_nothing_exported_but_timed_shows_the_pytorch_students_latency_only(loaded):
    layout, _, output = loaded
    report = report_of(layout)
    assert "Deployment artifacts" not in report
    latency = section(report, "## Latency of the PyTorch student (nothing exported)")
    assert "| model | runs on | cold start ms | p50 ms | p90 ms | p99 ms | img/s |" in latency  # no parity
    assert "`export.targets` is empty" in latency and "no `artifacts/` folder" in latency
    assert "| kd (pytorch fp32) @b1 |" in latency  # the deployed student, named
    assert "latency of the PyTorch student (nothing exported)" in output
    assert "deployment artifacts" not in output and not layout.artifacts.exists()


def test_a_multi_seed_deployment_names_the_seed_whose_weights_it_is(crosstask, loaded):
    shipped = crosstask[1].shipped.model  # chosen on validation (export.models: best_val)
    assert shipped in ("refilled", "scratch")
    assert deployed_student(crosstask[1]) == f"{shipped}, seed 0's weights"
    assert deployed_student(loaded[1]) == "kd"


# ---------------------------------------------------------------------------------- loaded teacher
def test_a_loaded_teachers_training_images_are_not_known(loaded):
    layout, metrics, output = loaded
    teacher = used_rows(metrics)["teacher"]
    assert teacher["labelled (train)"] == "not known (loaded from a checkpoint)"
    assert teacher["labelled (selection)"] == "not known"
    assert used_rows(metrics)["kd (main)"]["teacher trained on the student's images"] == "not known"
    assert metrics.models[0].labelled_images is None  # metrics.json claims no count either
    protocol = section(report_of(layout), "### Protocol")
    assert "whether the teacher trained on them is not known (not known (loaded" not in protocol
    assert "whether the teacher trained on them is not known (loaded from a checkpoint)" in protocol
    assert "not known (loaded from a checkpoint)" in output


def test_a_loaded_teacher_shows_what_the_recipe_states(loaded):
    """teacher.trained_on reaches the teacher's record (metrics.json) and the table shows it."""
    layout, metrics, _ = loaded
    recipe = yaml.safe_load(layout.recipe.read_text())
    assert recipe["teacher"]["trained_on"] is None
    stated = "digits 0-4 of the training split (the cross-task run)"
    teacher = metrics.models[0].model_copy(update={"trained_on": stated})
    restated = metrics.model_copy(update={"models": [teacher, *metrics.models[1:]]})
    assert used_rows(restated)["teacher"]["labelled (train)"] == f"as stated by the recipe: {stated}"


def test_trained_on_is_recorded_by_a_build(loaded, tmp_path):
    """A build with teacher.trained_on writes it into the teacher's record."""
    from edgekd.config.loading import load_recipe
    from edgekd.evaluation import teacher_record
    from edgekd.prepare import ModelChoice, prepare

    layout, _, _ = loaded
    recipe = load_recipe(layout.recipe, ["teacher.trained_on=digits 0-4", f"output_dir={tmp_path}"])
    p = prepare(recipe)
    record = teacher_record(
        p, ModelChoice("resnet8", {"width": 8}, 1, 1, "checkpoint"), tmp_path / "t.pt", None, None
    )
    assert record.trained_on == "digits 0-4" and record.labelled_images is None


# ------------------------------------------------------------------------------- teacher's classes
def test_the_teachers_accuracy_is_labelled_with_its_classes(crosstask, loaded):
    _, metrics, _ = crosstask
    teacher = next(row for row in summary_rows(metrics) if row[0] == "teacher")
    assert teacher[6].endswith("(on the teacher's classes: 0, 1, 2, 3, 4)")
    _, metrics, _ = loaded  # a teacher with the student's classes among its own: both accuracies, labelled
    teacher = next(row for row in summary_rows(metrics) if row[0] == "teacher")
    assert re.search(
        r"\(on the teacher's classes: 0, 1, 2, 3, 4; [0-9.]+ on the student's classes\)$", teacher[6]
    )


# ------------------------------------------------------------------------------------------- plots
def test_each_stage_is_plotted_with_its_own_selection_metric(crosstask):
    """REFILLED's and RKD's embedding stages are selected on validation 1-NN accuracy: they are drawn with
    it, in a panel of its own, and not as an untrained head's validation accuracy."""
    layout, _, _ = crosstask
    histories = read_json(layout.history)
    fig = training_curves_figure(histories)
    try:
        acc_ax, _, knn_ax = fig.axes[:3]
        assert "knn_acc" in knn_ax.get_title() and len(fig.axes) == 3
        for line in acc_ax.get_lines():
            rows = histories[line.get_label()]
            drawn = [not math.isnan(y) for y in line.get_ydata()]
            assert drawn == ["val_knn_acc" not in row for row in rows], line.get_label()
        embedded = {line.get_label() for line in knn_ax.get_lines()}
        assert embedded == {f"{m} seed{s}" for m in ("refilled", "rkd_ft") for s in SEEDS}
    finally:
        plt.close(fig)
    assert (layout.root / "training_curves.png").is_file() and (layout.root / "stages.png").is_file()


def test_every_line_has_its_own_colour_and_style(crosstask):
    layout, _, _ = crosstask
    histories = read_json(layout.history)
    assert len(histories) == 13  # the teacher and 4 methods x 3 seeds: more than 10 colours
    fig = training_curves_figure(histories)
    try:
        lines = fig.axes[1].get_lines()  # the training loss: every model
        assert len(lines) == 13
        looks = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
        assert len(looks) == len(lines)
    finally:
        plt.close(fig)
    many = line_styles(f"line {i}" for i in range(100))
    assert len({(s["color"], s["linestyle"], s.get("marker")) for s in many.values()}) == 100
