"""`edgekd sweep`: one build per budget sharing the teacher, and the accuracy–latency frontier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE

from edgekd.errors import EdgekdError
from edgekd.sweep import mark_pareto, parse_budgets, sweep_recipes


def test_budgets_are_parsed_with_units():
    points = parse_budgets("latency=0.5ms,250us,2")
    assert [p.value for p in points] == [0.5, 0.25, 2.0]
    with pytest.raises(EdgekdError, match="are the same budget"):
        parse_budgets("latency=0.5ms,500us")
    assert [p.value for p in parse_budgets("params=50k,1.5M")] == [50_000, 1_500_000]
    assert parse_budgets("params=50k")[0].override == "student.budget.params=50000"


@pytest.mark.parametrize("text", ["speed=1ms", "latency=", "latency=fast", "params=-3", "latency"])
def test_a_bad_budget_option_is_one_line(text):
    with pytest.raises(EdgekdError, match=r"^--budget: "):
        parse_budgets(text)


def family_recipe(tmp_path) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
    raw["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_run_folders_are_named_by_the_budgets_value_not_its_spelling(tmp_path):
    """'2e-1ms' and '2e1ms' once shared the folder 'latency-2e1ms' (the 20 ms point reused the 0.2 ms run),
    and limits were written with 6 significant digits (0.1234567 and 0.1234568 ran as one)."""
    points = parse_budgets("latency=2e-1ms,2e1ms,0.1234567ms,0.1234568,2e-5ms")
    labels = [point.label for point in points]
    assert labels[:2] == ["latency-0.2ms", "latency-20ms"] and len(set(labels)) == len(labels)
    _, recipes = sweep_recipes(family_recipe(tmp_path), (), points)
    assert [recipe.latency_budget.limit_ms for recipe in recipes] == [0.2, 20.0, 0.1234567, 0.1234568, 2e-5]
    assert len({recipe.run_dir for recipe in recipes}) == len(points)
    counts = parse_budgets("params=1.5M,70k,12345,2M")
    assert [point.label for point in counts] == ["params-1500k", "params-70k", "params-12345", "params-2M"]


@pytest.mark.parametrize(
    "texts",
    [("latency=300us,0.3ms",), ("latency=2e-1ms,0.2",), ("params=1M,1000k",), ("params=20k", "params=20000")],
)
def test_one_budget_in_two_spellings_is_refused(texts):
    with pytest.raises(EdgekdError, match=r"^--budget: .* are the same budget \(") as error:
        parse_budgets(texts)
    assert "\n" not in str(error.value)


def test_repeated_budget_options_sweep_their_union():
    points = parse_budgets(("params=20k,70k", "latency=1ms"))
    assert [point.label for point in points] == ["params-20k", "params-70k", "latency-1ms"]


def test_a_repeated_budget_option_is_not_dropped_on_the_command_line(cli, tmp_path):
    """Both options are read (the last alone once was): naming one budget in each is refused, nothing built."""
    result = cli("sweep", family_recipe(tmp_path), "--budget", "params=20k", "--budget", "params=20000")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "'20k' and '20000' are the same budget (20k)" in result.output
    assert not (tmp_path / "runs").exists()


def test_the_pareto_frontier_keeps_the_points_nothing_beats():
    rows = [
        {"test_acc": 90.0, "latency_ms": 1.0},
        {"test_acc": 95.0, "latency_ms": 2.0},
        {"test_acc": 94.0, "latency_ms": 3.0},  # slower and less accurate than the second
        {"test_acc": 90.0, "latency_ms": 1.5},  # as accurate as the first, slower
        {"test_acc": 97.0, "latency_ms": 5.0},
    ]
    mark_pareto(rows)
    assert [row["pareto"] for row in rows] == [True, True, False, False, True]


@pytest.mark.slow
def test_sweep_builds_once_per_budget_sharing_the_teacher(cli, tmp_path):
    raw = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
    raw["output_dir"] = str(tmp_path / "runs")
    raw["distill"]["baselines"] = []
    raw["student"]["budget"] = {"params": "70k"}
    raw["benchmark"] = {"threads": 1, "warmup_iters": 1, "warmup_s": 0.0, "min_iters": 3, "min_time_s": 0.0}
    raw["export"] = {"targets": {"onnx": ["fp32"]}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = cli("sweep", path, "--budget", "params=20k,70k", "--quiet")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "tiny_sweep"
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["budgets"] == ["params 20k", "params 70k"]
    students = {point["budget"]: point["student"] for point in sweep["points"]}
    assert students == {"params 20k": "resnet8 {'width': 8}", "params 70k": "resnet20 {'width': 8}"}
    assert {point["artifact"] for point in sweep["points"]} == {"pytorch fp32", "onnx fp32"}
    assert sweep["frontier"] and all(point["pareto"] for point in sweep["frontier"])
    assert (folder / "frontier.png").is_file() and (folder / "sweep.csv").is_file()
    second = json.loads((folder / "tiny-params-70k" / "metrics.json").read_text())
    teacher = next(model for model in second["models"] if model["role"] == "teacher")
    assert teacher["source"] == "checkpoint"  # trained once, by the first run
    again = cli("sweep", path, "--budget", "params=20k,70k", "--quiet")  # finished runs are reused
    assert (
        again.exit_code == 0 and json.loads((folder / "sweep.json").read_text())["points"] == sweep["points"]
    )
    # ... but only when built from the recipe they would run now: another --set is refused, nothing rebuilt
    built = (folder / "tiny-params-20k" / "metrics.json").stat().st_mtime_ns
    changed = cli("sweep", path, "--budget", "params=20k,70k", "--set", "train.epochs=3", "--quiet")
    assert changed.exit_code == 2 and changed.output.count("\n") == 1, changed.output
    assert "tiny-params-20k' was built from another recipe (it differs in train.epochs)" in changed.output
    assert (folder / "tiny-params-20k" / "metrics.json").stat().st_mtime_ns == built
    forced = cli("sweep", path, "--budget", "params=20k", "--set", "train.epochs=3", "--force", "--quiet")
    assert forced.exit_code == 0, forced.output
    rebuilt = yaml.safe_load((folder / "tiny-params-20k" / "recipe.yaml").read_text())
    assert rebuilt["train"]["epochs"] == 3
