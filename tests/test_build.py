"""`edgekd build` end to end on the embedded digits: files, determinism, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

RUN_FILES = [
    "recipe.yaml",
    "layout.json",
    "metrics.json",
    "history.json",
    "history.csv",
    "report.md",
    "report.html",
    "accuracy_vs_params.png",
    "training_curves.png",
    "models/teacher.pt",
    "models/kd.pt",
    "models/scratch.pt",
]


def stable_metrics(run_dir: Path) -> list[dict]:
    """The per-model numbers, without wall-clock times (nor the checkpoint and stage-artifact paths, which name
    the folder; the artifacts' SHA-256 stay)."""

    def stable(value):
        if isinstance(value, dict):
            return {
                k: stable(v)
                for k, v in value.items()
                if not k.endswith("time_s") and k not in ("checkpoint", "path")
            }
        if isinstance(value, list):
            return [stable(item) for item in value]
        return value

    return stable(json.loads((run_dir / "metrics.json").read_text())["models"])


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_writes_every_file_and_prints_the_table(cli, write_recipe, tmp_path):
    result = cli("build", write_recipe(), "--quiet")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert "kd (main)" in result.output and "scratch" in result.output and "teacher" in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    names = [r["name"] for r in metrics["models"]]
    assert names == ["teacher", "kd", "scratch"]
    for record in metrics["models"][1:]:
        assert record["params"] <= 20_000 and record["fits_budget"] is True
        assert 0 <= record["test_acc"] <= 100 and record["flops"] > 0
    assert "| model |" in (run_dir / "report.md").read_text()


def test_same_seed_gives_identical_metrics_and_weights(cli, write_recipe, tmp_path):
    path = write_recipe()
    assert cli("build", path, "--quiet").exit_code == 0
    assert cli("build", path, "--quiet", "--set", "name=again").exit_code == 0
    first, second = tmp_path / "runs" / "tiny", tmp_path / "runs" / "again"
    assert stable_metrics(first) == stable_metrics(second)
    for model in ("teacher", "kd", "scratch"):
        assert same_weights(first / "models" / f"{model}.pt", second / "models" / f"{model}.pt")


def test_existing_run_folder_needs_resume_or_force(cli, write_recipe):
    path = write_recipe()
    assert cli("build", path, "--quiet").exit_code == 0
    again = cli("build", path, "--quiet")
    assert again.exit_code == 2 and "--resume" in again.output
    assert cli("build", path, "--quiet", "--resume").exit_code == 0  # everything finished: nothing retrained
    changed = cli("build", path, "--quiet", "--resume", "--set", "train.epochs=3")
    assert changed.exit_code == 2 and "train.epochs" in changed.output
    # A run folder written before a field existed still resumes: the stored recipe gets today's defaults.
    stored_path = path.parent / "runs" / "tiny" / "recipe.yaml"
    stored = yaml.safe_load(stored_path.read_text())
    del stored["data"]["unlabeled"]
    stored_path.write_text(yaml.safe_dump(stored))
    assert cli("build", path, "--quiet", "--resume").exit_code == 0
    # ... but not when the new field's default changes what the older version did (it kept a small last batch)
    del stored["data"]["last_batch"]
    stored_path.write_text(yaml.safe_dump(stored))
    legacy = cli("build", path, "--quiet", "--resume")
    assert legacy.exit_code == 2 and "data.last_batch" in legacy.output
    assert cli("build", path, "--quiet", "--resume", "--set", "data.last_batch=keep").exit_code == 0


def _edgekd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgekd.cli", *args]


def _kill_after_epochs(path: Path, history: Path, epochs: int, env: dict[str, str]) -> None:
    """Start a build of `path` and SIGKILL it once `history` lists `epochs` epochs; it died of that signal."""
    process = _start_build(path, env)
    try:
        _wait_for_epochs(history, epochs, process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


def _build_succeeds(path: Path, env: dict[str, str], *options: str) -> None:
    """`edgekd build` of `path` with `options`, in a real process: it exits 0."""
    result = subprocess.run(
        _edgekd("build", str(path), "--quiet", *options), env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _start_build(path: Path, env: dict[str, str]) -> subprocess.Popen:
    """`edgekd build` of `path` in a background process, output discarded."""
    return subprocess.Popen(
        _edgekd("build", str(path), "--quiet"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait_for_epochs(history: Path, epochs: int, process: subprocess.Popen, timeout: float = 1800) -> None:
    """Until `history` lists `epochs` epochs (an event, not a duration); the ceiling only stops a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if history.is_file():
            try:
                if len(json.loads(history.read_text())) >= epochs:
                    return
            except json.JSONDecodeError:
                pass
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no epoch finished in time")


@pytest.mark.parametrize(
    ("method", "options", "stage", "stage_epochs"),
    [
        ("kd", {}, "train", [1, 2, 3, 4, 5, 6]),
        # a two-stage plan killed in its second stage: the finished hint stage is not trained again
        ("fitnet", {"hint_epochs": 2}, "task", [1, 2, 3, 4]),
        # stage 1 selected by its own metric, stage 2 with a fresh head and centres computed at its start
        ("refilled", {"embedding_epochs": 2}, "classifier", [1, 2, 3, 4]),
        # DistPro killed in its search (α̃'s optimizer and the recorded process resume with the stage) and in
        # its replay (a fresh student reading the process): the same process and the same student
        ("distpro", {"search_epochs": 4}, "search", [1, 2, 3, 4]),
        ("distpro", {"search_epochs": 2}, "replay", [1, 2, 3, 4, 5, 6]),
    ],
)
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    write_recipe, tmp_path, method, options, stage, stage_epochs
):
    train = {"epochs": 6, "optimizer": {"lr": 0.1}}
    path = write_recipe(train=train, distill={"method": method, method: options})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_dir = tmp_path / "runs" / "tiny"
    stage_dir = run_dir / "train" / method / stage
    _kill_after_epochs(path, stage_dir / "history.json", 2, env)
    assert not (run_dir / "metrics.json").exists()
    finished = {path: path.stat().st_mtime_ns for path in (run_dir / "train" / method).glob("*/fit.json")}
    _build_succeeds(path, env, "--resume")
    _build_succeeds(path, env, "--set", "name=reference")
    reference_dir = tmp_path / "runs" / "reference"
    assert stable_metrics(run_dir) == stable_metrics(reference_dir)
    assert same_weights(run_dir / "models" / f"{method}.pt", reference_dir / "models" / f"{method}.pt")
    history = json.loads((stage_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == stage_epochs
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())  # not trained again
    if method == "distpro":
        process = Path("train") / "distpro" / "search" / "artifacts" / "process.pt"
        ours, theirs = (torch.load(root / process, weights_only=True) for root in (run_dir, reference_dir))
        assert ours["steps"] == theirs["steps"] and torch.equal(ours["alpha"], theirs["alpha"])


def test_a_second_build_of_a_busy_run_folder_is_refused_naming_the_holder(write_recipe, tmp_path):
    path = write_recipe(train={"epochs": 1000, "optimizer": {"lr": 0.1}}, distill={"method": "kd"})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = _start_build(path, env)
    run_dir = tmp_path / "runs" / "tiny"
    try:
        _wait_for_epochs(run_dir / "train" / "kd" / "train" / "history.json", 1, first)
        for extra in ([], ["--force"], ["--resume"]):
            second = subprocess.run(
                _edgekd("build", str(path), "--quiet", *extra), env=env, capture_output=True, text=True
            )
            assert second.returncode == 2, (extra, second.stderr)
            message = second.stderr  # one line, with nothing (no empty progress line) before it
            assert message.startswith("error: ") and message.count("\n") == 1, message
            assert f"in use by edgekd pid {first.pid}" in message, message
        assert (run_dir / "train" / "kd" / "train" / "history.json").is_file()  # --force deleted nothing
    finally:
        first.send_signal(signal.SIGKILL)  # a dead holder leaves its lock file, but no lock
        first.wait()
    # the dead holder's lock is taken over: a new build (a short one) runs into the same folder
    forced = subprocess.run(
        _edgekd("build", str(path), "--quiet", "--force", "--set", "train.epochs=1"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert forced.returncode == 0, forced.stderr
    assert (run_dir / "metrics.json").is_file()


def test_bad_recipe_is_one_line_exit_2_and_writes_nothing(cli, write_recipe, tmp_path):
    path = write_recipe(data={"dataset": "digits", "batch_sise": 3})
    result = cli("build", path)
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "data.batch_sise" in result.output
    assert not (tmp_path / "runs").exists()


def test_impossible_budget_names_the_smallest_member(cli, write_recipe, tmp_path):
    result = cli("build", write_recipe(student={"family": "resnet", "budget": {"params": 100}}))
    assert result.exit_code == 2 and "smallest" in result.output and "resnet" in result.output
    assert not (tmp_path / "runs").exists()


def test_teacher_checkpoint_of_wrong_architecture(cli, write_recipe, tmp_path):
    from edgekd.models import create_model

    wrong = tmp_path / "wrong.pt"
    torch.save(create_model("wrn_10_1", num_classes=10, in_channels=1).state_dict(), wrong)
    result = cli("build", write_recipe(teacher={"model": "resnet8", "checkpoint": str(wrong)}))
    assert result.exit_code == 2
    assert "teacher.checkpoint" in result.output and "resnet8" in result.output and "missing" in result.output
    assert not (tmp_path / "runs").exists()


def test_teacher_from_checkpoint_is_used_as_is(cli, write_recipe, tmp_path):
    from edgekd.models import create_model

    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10, in_channels=1)
    checkpoint = tmp_path / "teacher.pt"
    torch.save({"state_dict": teacher.state_dict()}, checkpoint)
    result = cli(
        "build",
        write_recipe(teacher={"model": "resnet8", "checkpoint": str(checkpoint)}, distill={"method": "kd"}),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert same_weights(tmp_path / "runs" / "tiny" / "models" / "teacher.pt", _bare(checkpoint, tmp_path))


def _bare(path: Path, tmp_path: Path) -> Path:
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(path, weights_only=True)["state_dict"], bare)
    return bare


def test_class_subset_run_with_finetune_baseline(cli, write_recipe, tmp_path):
    data = {"dataset": "digits", "batch_size": 64, "classes": [3, 8, 5], "per_class": 10}
    result = cli(
        "build", write_recipe(data=data, distill={"method": "kd", "baselines": ["finetune"]}), "--quiet"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    assert metrics["data"]["student"]["num_classes"] == 3
    finetune = next(r for r in metrics["models"] if r["name"] == "finetune")
    assert finetune["arch"] == "resnet8" and finetune["fits_budget"] is False
    assert "OVER" in result.output and "on the student's classes" in result.output


def test_unlabeled_images_feed_kd_and_the_report_says_so(cli, write_recipe, tmp_path):
    data = {"dataset": "digits", "batch_size": 16, "classes": [2, 6], "per_class": 10, "unlabeled": "subset"}
    result = cli("build", write_recipe(data=data), "--quiet")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    unlabeled = metrics["data"]["student"]["unlabeled"]
    assert unlabeled["source"] == "subset" and unlabeled["images"] > 100
    used = {r["name"]: r.get("unlabeled_images") for r in metrics["models"] if r["role"] == "student"}
    assert used == {"kd": unlabeled["images"], "scratch": 0}
    history = json.loads((run_dir / "history.json").read_text())
    assert "train_kd_unlabeled" in history["kd"][-1] and "train_kd_unlabeled" not in history["scratch"][-1]
    report = (run_dir / "report.md").read_text()
    assert "fed the distillation terms of: kd; not used by: scratch" in report
