"""Comparisons fair to every baseline and accounted truthfully (#26): what DistPro's search read is counted
as training images (never as selection images), and a table of several comparisons says how many it makes
and, with `report.correction: holm`, judges them together.

One tiny real build of the digits data over two seeds: DistPro (a one-epoch search, a two-epoch replay)
against `scratch` and `kd`, nothing exported or timed."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.layout import RunLayout
from edgekd.records import RunMetrics
from edgekd.report.tables import DATA_COLUMNS, data_rows

pytestmark = pytest.mark.slow

TINY_NET = {"model": "resnet8", "model_args": {"width": 8}}
RECIPE = {
    "seeds": [0, 1],
    "data": {"dataset": "digits", "batch_size": 128},
    "teacher": {**TINY_NET, "train": {"epochs": 1, "optimizer": {"lr": 0.1}}},
    "student": TINY_NET,
    "distill": {"method": "distpro", "baselines": ["scratch", "kd"], "distpro": {"search_epochs": 1}},
    "train": {"epochs": 2, "optimizer": {"lr": 0.1}},
    "export": {"targets": {}},
    "benchmark": {"enabled": False},
    "report": {"plots": False, "reference": "scratch", "correction": "holm"},
}


@pytest.fixture(scope="module")
def distpro(tmp_path_factory) -> tuple[RunLayout, RunMetrics]:
    root = tmp_path_factory.mktemp("distpro")
    path = root / "distpro.yaml"
    path.write_text(yaml.safe_dump({"name": "distpro", "output_dir": str(root), **RECIPE}))
    result = CliRunner().invoke(main, ["build", str(path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    layout = RunLayout(root / "distpro")
    return layout, RunMetrics.load(layout.metrics)


def model(metrics: RunMetrics, name: str):
    return next(record for record in metrics.models if record.name == name)


def test_distpros_search_images_are_training_images_not_selection_images(distpro):
    _, metrics = distpro
    validation = metrics.student_data["sizes"]["val"]
    training = metrics.student_data["sizes"]["train"]
    record = model(metrics, "distpro")
    search, replay = record.stages
    assert search.stage == "search" and search.data.labelled_selection == 0
    assert (
        0 < search.data.held_out < search.data.labelled_train == training
    )  # held out of the training images
    assert replay.data.labelled_selection == validation and replay.data.held_out == 0
    # the model-level accounting: the replay chose on the validation images, nothing else selected
    assert record.labelled_images.train == training and record.labelled_images.selection == validation
    (row,) = [dict(zip(DATA_COLUMNS, row, strict=True)) for row in data_rows(metrics) if "distpro" in row[0]]
    assert row["labelled (train)"] == str(training) and row["labelled (selection)"] == str(validation)


def test_the_report_says_how_many_comparisons_and_holm_judges_them_together(distpro):
    layout, metrics = distpro
    compared = [record.paired for record in metrics.models if record.paired]
    assert len(compared) == 2  # distpro and kd against scratch
    assert all(p.comparisons == 2 and p.correction == "holm" for p in compared)
    report = layout.report_md.read_text()
    assert "The table makes 2 comparisons with `scratch`; verdicts are Holm-corrected" in report
    assert "held out" in report  # the search's row of the stage table
