"""`edgekd sweep`: one build per budget sharing the teacher, and the accuracy–latency frontier."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TINY_RECIPE

from edgekd.errors import EdgekdError
from edgekd.sweep import mark_pareto, parse_budgets


def test_budgets_are_parsed_with_units():
    points = parse_budgets("latency=0.5ms,250us,2")
    assert [p.value for p in points] == [0.5, 0.25, 2.0]
    with pytest.raises(EdgekdError, match="names a value twice"):
        parse_budgets("latency=0.5ms,500us")
    assert [p.value for p in parse_budgets("params=50k,1.5M")] == [50_000, 1_500_000]
    assert parse_budgets("params=50k")[0].override == "student.budget.params=50000"


@pytest.mark.parametrize("text", ["speed=1ms", "latency=", "latency=fast", "params=-3", "latency"])
def test_a_bad_budget_option_is_one_line(text):
    with pytest.raises(EdgekdError, match=r"^--budget: "):
        parse_budgets(text)


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
