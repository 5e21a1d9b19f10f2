"""Latency budgets: the search, the choice on a recorded table, the cache, the errors, the end check."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE

from edgekd.config.loading import validate_recipe
from edgekd.data import DataPlan
from edgekd.errors import EdgekdError
from edgekd.models.budget import describe_member, family_members, member_params, member_size
from edgekd.sizing import LatencyCache, fingerprint, size_to_latency
from edgekd.sizing.latency_budget import latency_target
from edgekd.sizing.search import MemberState, search_fitting

# Timing as short as the harness allows: the tests check what is timed and reused, not how fast.
QUICK_TIMING = {"threads": 1, "warmup_iters": 1, "warmup_s": 0.0, "min_iters": 3, "min_time_s": 0.0}


def latency_raw(tmp_path: Path, params: str | None = "70k", **latency) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
    raw["output_dir"] = str(tmp_path / "runs")
    budget = {"latency": {"limit_ms": 10, "backend": "onnxruntime", "precision": "fp32", **latency}}
    if params is not None:
        budget["params"] = params
    raw["student"] = {"family": "resnet", "budget": budget}
    raw["benchmark"] = dict(QUICK_TIMING)
    return raw


def recipe_and_data(raw: dict):
    recipe = validate_recipe(raw)
    return recipe, DataPlan(recipe.data, recipe.teacher.classes).student(recipe.seed)


def record_table(recipe, data, p50_of) -> LatencyCache:
    """A latency table as a run on this machine would have cached it, with the given p50 per member."""
    cache = LatencyCache(recipe.latency_cache_dir, fingerprint(latency_target(recipe, data)))
    for member in family_members("resnet"):
        p50 = p50_of(member)
        cache.put(describe_member(*member), {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3})
    return cache


# ------------------------------------------------------------------------------------------- the search
def grid_states() -> tuple[list, list[MemberState]]:
    members = family_members("resnet")
    states = [
        MemberState(index, member_params(member, 10, 1), member_params(member, 10, 1), member_size(member))
        for index, member in enumerate(members)
    ]
    return members, states


@pytest.mark.parametrize("limit", [1e3, 3e4, 1e5, 4e5, 2e6, 1e9])
def test_search_finds_the_largest_fitting_member_timing_a_few(limit):
    """Latency growing with the work per image (here: parameters): the search times a fraction of the
    family and its answer is the true largest fitting member, always a timed one."""
    members, states = grid_states()
    timed = []

    def measure(state):
        timed.append(state.index)
        return {"p50": float(state.params)}, "measured"

    search_fitting(
        states, lambda t: t["p50"] <= limit, measure, 1, lambda s: describe_member(*members[s.index])
    )
    truth = [s for s in states if s.params <= limit]
    fitting = [s for s in states if s.fits]
    assert len(timed) <= 8 < len(states)
    if not truth:
        assert not fitting
        return
    best = max(fitting, key=lambda s: s.params)
    assert best.params == max(s.params for s in truth)
    assert best.source == "measured"
    assert all(s.params <= limit for s in fitting)  # no inferred fit is wrong on a monotone table


def test_search_stops_once_the_wanted_count_is_known():
    members, states = grid_states()
    search_fitting(
        states,
        lambda t: t["p50"] <= 5e5,
        lambda s: ({"p50": float(s.params)}, "measured"),
        3,
        lambda s: describe_member(*members[s.index]),
    )
    ordered = sorted(states, key=lambda s: -s.params)
    first_fits = [s for s in ordered if s.fits][:3]
    assert len(first_fits) == 3
    assert all(s.known for s in ordered if s.params >= first_fits[-1].params)


# ----------------------------------------------------------------------------------- the recorded table
def test_the_largest_fitting_member_of_a_recorded_table_is_chosen_without_timing(tmp_path):
    """Latency need not follow size: on a recorded table the choice is the most parameters among the members
    that fit, whatever their order, and nothing is timed again."""
    recipe, data = recipe_and_data(latency_raw(tmp_path, params=None, limit_ms=0.5))
    odd_one = ("resnet56", {"width": 8})  # 215k params, recorded as fast as the smallest

    def p50_of(member) -> float:  # by width only, but the odd one
        return 0.1 if member == odd_one else 0.2 if member[1]["width"] == 8 else 0.4 * member[1]["width"] / 16

    record_table(recipe, data, p50_of)
    (name, args), sizing = size_to_latency(recipe, data)
    fitting = [member for member in family_members("resnet") if p50_of(member) <= 0.5]
    expected = max(fitting, key=lambda member: member_params(member, 10, 1))
    assert (name, args) == expected == ("resnet110", {"width": 16})
    assert sizing.measured == 0 and sizing.cached == len(family_members("resnet"))
    assert sizing.chosen == "resnet110 with width=16"
    chosen_row = next(row for row in sizing.candidates if row.member == sizing.chosen)
    assert chosen_row.latency_ms == pytest.approx(0.4) and chosen_row.fits


def test_a_params_budget_bounds_the_latency_choice(tmp_path):
    recipe, data = recipe_and_data(latency_raw(tmp_path, params="100k", limit_ms=1.0))
    record_table(recipe, data, lambda m: 0.01)  # everything is fast: the parameter budget decides
    (name, args), sizing = size_to_latency(recipe, data)
    assert (name, args) == ("resnet8", {"width": 16})  # 77.7k, the largest under 100k
    skipped = [row for row in sizing.candidates if row.source == "skipped"]
    assert skipped and all(row.params > 100_000 and "100,000-parameter" in row.note for row in skipped)


def test_proxy_rule_trains_the_finalists_and_keeps_the_best_on_validation(tmp_path):
    raw = latency_raw(
        tmp_path, params="70k", limit_ms=1.0, rule="proxy", proxy={"candidates": 2, "epochs": 1}
    )
    recipe, data = recipe_and_data(raw)
    record_table(recipe, data, lambda m: 0.01)
    (name, args), sizing = size_to_latency(recipe, data)
    finalists = [row for row in sizing.candidates if row.proxy_val_acc is not None]
    assert [row.member for row in finalists] == ["resnet20 with width=8", "resnet14 with width=8"]
    best = max(finalists, key=lambda row: (row.proxy_val_acc, row.params))
    assert sizing.chosen == best.member == describe_member(name, args)
    assert all("proxy val acc" in row.note for row in finalists)


# ------------------------------------------------------------------------------------------------ cache
def test_the_cache_is_reused_and_missed_when_the_fingerprint_changes(tmp_path):
    """Real exports and timings (ONNX Runtime, three small members): a second sizing times nothing; another
    thread count, or another machine, is another table."""
    recipe, data = recipe_and_data(latency_raw(tmp_path))
    _, first = size_to_latency(recipe, data)
    assert first.measured >= 1 and first.cached == 0
    _, second = size_to_latency(recipe, data)
    assert second.measured == 0 and second.cached == first.measured
    assert second.chosen == first.chosen and second.cache_file == first.cache_file

    raw = latency_raw(tmp_path)
    raw["benchmark"]["threads"] = 2
    other_threads, data = recipe_and_data(raw)
    _, third = size_to_latency(other_threads, data)
    assert third.measured >= 1 and third.cache_file != first.cache_file

    target = latency_target(recipe, data)
    machine = dict(first.fingerprint["machine"], cpu="another CPU")
    elsewhere = LatencyCache(recipe.latency_cache_dir, fingerprint(target, machine))
    assert elsewhere.path != Path(first.cache_file) and elsewhere.get(first.chosen) is None
    assert LatencyCache(recipe.latency_cache_dir, first.fingerprint).get(first.chosen) is not None


def test_a_cache_file_with_another_key_is_not_trusted(tmp_path):
    recipe, data = recipe_and_data(latency_raw(tmp_path))
    cache = record_table(recipe, data, lambda m: 0.01)
    stored = json.loads(cache.path.read_text())
    stored["key"]["machine"]["cpu"] = "edited"
    cache.path.write_text(json.dumps(stored))
    assert LatencyCache(recipe.latency_cache_dir, cache.key).entries == {}


SMALLEST = describe_member("resnet8", {"width": 8})


def edit_entry(cache: LatencyCache, member: str, entry) -> None:
    """Edit one member's entry of the cache file in place, as a user with an editor might."""
    stored = json.loads(cache.path.read_text())
    stored["members"][member] = entry
    cache.path.write_text(json.dumps(stored))


@pytest.mark.parametrize(
    "entry",
    [
        {"timings_ms": {"p50": 0, "p90": 0, "p99": 0}},
        {"timings_ms": {"p50": -0.1, "p90": 0.2, "p99": 0.3}},
        {"timings_ms": {"p50": float("nan"), "p90": 0.2, "p99": 0.3}},
        {"timings_ms": {"p50": float("inf"), "p90": 0.2, "p99": 0.3}},
        {"timings_ms": {"p50": "fast", "p90": 0.2, "p99": 0.3}},
        {"timings_ms": {"p50": True, "p90": 0.2, "p99": 0.3}},
        {"timings_ms": {"p50": 0.1, "p90": 0.2}},
        {"timings_ms": [0.1, 0.2, 0.3]},
        {"timings_ms": "0.1"},
        {"measured_at": "yesterday"},
        [0.1, 0.2, 0.3],
        7,
    ],
    ids=[
        "zero",
        "negative",
        "nan",
        "inf",
        "text",
        "bool",
        "no p99",
        "timings a list",
        "timings a string",
        "no timings",
        "entry a list",
        "entry an int",
    ],
)
def test_an_edited_cache_entry_is_ignored_with_a_warning(tmp_path, entry):
    recipe, data = recipe_and_data(latency_raw(tmp_path))
    cache = record_table(recipe, data, lambda m: 0.01)
    edit_entry(cache, SMALLEST, entry)
    with pytest.warns(UserWarning, match=rf"the entry of '{SMALLEST}' is ignored"):
        reread = LatencyCache(recipe.latency_cache_dir, cache.key)
    assert reread.get(SMALLEST) is None
    assert reread.get(describe_member("resnet14", {"width": 8}))["p50"] == 0.01  # the others are kept


def test_a_zero_timing_in_the_cache_is_timed_again_not_trusted(tmp_path):
    """Every member cached as too slow but the smallest, edited to 0 ms: it is timed for real (it fits the
    10 ms limit on its own merit) and its entry rewritten; a zero timing used to fit any limit."""
    recipe, data = recipe_and_data(latency_raw(tmp_path))
    cache = record_table(recipe, data, lambda m: 100.0)
    edit_entry(cache, SMALLEST, {"timings_ms": {"p50": 0, "p90": 0, "p99": 0}})
    with pytest.warns(UserWarning, match="p50 is 0; allowed: a finite time above 0 ms"):
        (name, args), sizing = size_to_latency(recipe, data)
    row = next(row for row in sizing.candidates if row.member == SMALLEST)
    assert (name, args) == ("resnet8", {"width": 8}) and row.source == "measured" and row.latency_ms > 0
    stored = json.loads(cache.path.read_text())["members"][SMALLEST]["timings_ms"]
    assert stored["p50"] > 0


# ----------------------------------------------------------------------------------------------- errors
def test_an_impossible_latency_budget_names_the_fastest_member(tmp_path):
    recipe, data = recipe_and_data(latency_raw(tmp_path, limit_ms=1e-6))
    with pytest.raises(EdgekdError) as error:
        size_to_latency(recipe, data)
    message = str(error.value)
    assert message.startswith(
        "student.budget.latency.limit_ms: 1e-06 ms is below the fastest 'resnet' member"
    )
    # which member timed fastest depends on the machine's noise (resnet8 and resnet14 are within it): any member
    assert re.search(r"\(resnet\d+ with width=\d+: p50 ", message), message
    assert "onnxruntime fp32, batch 1, 1 thread)" in message
    assert "\n" not in message


def test_an_impossible_latency_budget_is_exit_2_and_writes_no_run(cli, tmp_path):
    """One line, exit 2, no run folder; what was timed stays in the cache (it is true of this machine)."""
    raw = latency_raw(tmp_path, limit_ms=1e-6)
    raw["name"] = "impossible"
    path = tmp_path / "impossible.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = cli("build", path, "--quiet")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("error: student.budget.latency.limit_ms: 1e-06 ms is below the fastest")
    assert re.search(r"'resnet' member \(resnet\d+ with width=\d+: p50 ", result.output), result.output
    assert not (tmp_path / "runs" / "impossible").exists()
    assert list((tmp_path / "runs" / "latency_cache").glob("*.json"))


@pytest.mark.parametrize(
    ("latency", "field", "says"),
    [
        ({"limit_ms": 1, "backend": "pytorch", "precision": "int8"}, "precision", "not sized on pytorch"),
        ({"limit_ms": "fast"}, "limit_ms", "fast"),
        ({"limit_ms": 0}, "limit_ms", "greater than 0"),
        ({"limit_ms": 1, "statistic": "p75"}, "statistic", "p75"),
    ],
)
def test_bad_latency_budgets_name_the_field(tmp_path, latency, field, says):
    raw = latency_raw(tmp_path)
    raw["student"]["budget"]["latency"] = latency
    with pytest.raises(EdgekdError) as error:
        validate_recipe(raw)
    assert str(error.value).startswith(f"student.budget.latency.{field}:") and says in str(error.value)


def test_limits_are_read_with_units_and_a_budget_needs_one(tmp_path):
    for text, ms in (("500us", 0.5), ("2ms", 2.0), ("0.25", 0.25), ("1.5 ms", 1.5)):
        raw = latency_raw(tmp_path, limit_ms=text)
        assert validate_recipe(raw).latency_budget.limit_ms == pytest.approx(ms)
    raw = latency_raw(tmp_path)
    raw["student"]["budget"] = {}
    with pytest.raises(EdgekdError, match=r"^student.budget: give `params`, `latency` or both"):
        validate_recipe(raw)


def test_tensorrt_sizing_where_tensorrt_cannot_run_says_where_to_size(tmp_path):
    from edgekd.exporters.tensorrt_export import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT and a GPU are here: sizing on tensorrt works")
    recipe, data = recipe_and_data(latency_raw(tmp_path, precision="fp16", backend="tensorrt"))
    with pytest.raises(EdgekdError, match=r"^student.budget.latency.backend: tensorrt needs TensorRT"):
        size_to_latency(recipe, data)


# ------------------------------------------------------------------------------------- the command line
def test_latency_table_times_every_member_once_and_saves_csv_and_json(cli, tmp_path):
    raw = latency_raw(tmp_path)
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = cli("latency-table", path, "--out", tmp_path / "tables", "--quiet")
    assert result.exit_code == 0, result.output
    (csv_file,) = (tmp_path / "tables").glob("*.csv")
    rows = csv_file.read_text().splitlines()
    assert rows[0].startswith("member,model,params,flops,p50_ms")
    sources = [row.split(",")[-2] for row in rows[1:]]
    assert len(rows) - 1 == len(family_members("resnet"))
    assert sources.count("measured") == 3 and sources.count("skipped") == len(rows) - 4  # 70k: three members
    table = json.loads(csv_file.with_suffix(".json").read_text())
    assert table["chosen"] == "resnet20 with width=8"

    again = cli("latency-table", path, "--out", tmp_path / "tables", "--quiet")
    assert again.exit_code == 0 and "read from the latency cache: 3," in again.output.replace("\n", " ")


@pytest.mark.parametrize(
    ("out", "says"),
    [("table.csv", "is a file, not a folder"), ("table.csv/tables", "which is a file")],
    ids=["a file", "under a file"],
)
def test_latency_table_refuses_an_unusable_out_before_timing_anything(cli, tmp_path, out, says):
    (tmp_path / "table.csv").write_text("an earlier table\n")
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(latency_raw(tmp_path)))
    result = cli("latency-table", path, "--out", tmp_path / out, "--quiet")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: --out: '{tmp_path / out}' ") and says in result.output
    assert not (tmp_path / "runs").exists()  # nothing timed: the cache was never written
    assert (tmp_path / "table.csv").read_text() == "an earlier table\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any folder")
def test_latency_table_refuses_a_folder_it_cannot_write_in_before_timing(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(latency_raw(tmp_path)))
    result = cli("latency-table", path, "--out", locked / "tables", "--quiet")
    assert result.exit_code == 2 and "cannot write in" in result.output and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_latency_budget_build_records_the_candidates_and_checks_the_shipped_artifact(
    cli, write_recipe, tmp_path
):
    student = {
        "family": "resnet",
        "budget": {"params": "70k", "latency": {"limit_ms": 50, "backend": "openvino", "precision": "int8"}},
    }
    # A 2-epoch student is not what INT8 parity guards: the test is about sizing and the budget check.
    export = {"parity": {"int8_min_top1": 0.5, "int8_max_acc_drop": 50}}
    result = cli("build", write_recipe(student=student, benchmark=QUICK_TIMING, export=export), "--quiet")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    metrics = json.loads((run / "metrics.json").read_text())
    sizing = metrics["student_choice"]["sizing"]
    assert sizing["chosen"] == "resnet20 with width=8" and metrics["student_choice"]["arch"] == "resnet20"
    latency = metrics["budget_check"]["latency"]
    assert latency["artifact"] == "openvino int8" and latency["verdict"] == "fits"
    assert latency["measured_ms"] > 0 and latency["predicted_ms"] > 0
    # The budget's artifact is exported although export.targets names none.
    assert [a["name"] for a in metrics["artifacts"]] == ["pytorch fp32", "openvino int8"]
    assert "budget latency openvino int8 p50 @b1: " in result.output.replace("\n", " ")
    for report in ("report.md", "report.html"):  # the candidate table, the choice, the measured verdict
        text = (run / report).read_text()
        assert "Student sizing" in text and "resnet20 with width=8 (chosen)" in text
        assert "latency openvino int8 p50 @b1: " in text


@pytest.mark.slow
def test_strict_budget_fails_an_over_budget_build_with_exit_1_after_writing_the_report(
    cli, write_recipe, tmp_path
):
    student = {
        "model": "resnet8",
        "model_args": {"width": 8},
        "budget": {"latency": {"limit_ms": 1e-6, "backend": "onnxruntime"}},
    }
    path = write_recipe(student=student, benchmark=QUICK_TIMING)
    result = cli("build", path, "--quiet", "--strict-budget")
    assert result.exit_code == 1
    *tables, error = result.output.strip().splitlines()  # the summary tables, then the one error line
    assert error.startswith("error: --strict-budget") and "onnx fp32 p50" in error and "OVER by" in error
    assert any("deployment artifacts" in line for line in tables)
    run = tmp_path / "runs" / "tiny"
    check = json.loads((run / "metrics.json").read_text())["budget_check"]
    assert check["fits"] is False and check["latency"]["verdict"].startswith("OVER by")
    assert (run / "report.md").is_file()

    lenient = cli("build", path, "--quiet", "--force")
    assert lenient.exit_code == 0 and "OVER by" in lenient.output
