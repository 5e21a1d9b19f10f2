"""The second hardening pass (issue #24): what a hostile or careless user did to the surfaces added since the
first one — the run folder and --force, `edgekd export` of a checkpoint, the file system failing under a
build, absurd values that used to fail minutes in, corrupt run folders given to `edgekd report`, a failed
INT8 gate that hid the results, and latency timed on a busy machine.

Every refusal is one line on stderr, exit code 2 (1 for a failed check or a full disk), with nothing
half-written left behind.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

# A build of a few seconds: one epoch each, no plots; ONNX FP32 exported and timed briefly.
QUICK = {
    "data": {"dataset": "digits", "batch_size": 128},
    "teacher": {"model": "resnet8", "train": {"epochs": 1}},
    "student": {"family": "resnet", "budget": {"params": "20k"}},
    "distill": {"method": "kd", "baselines": ["scratch"]},
    "train": {"epochs": 1},
    "export": {"targets": {"onnx": ["fp32"]}},
    "benchmark": {"batches": [1], "min_iters": 5, "min_time_s": 0.01, "warmup_iters": 1, "warmup_s": 0.0},
    "report": {"plots": False},
}


def quick_recipe(folder: Path, name: str = "quick", **changes) -> Path:
    recipe = {"name": name, "output_dir": str(folder / "runs"), **yaml.safe_load(yaml.safe_dump(QUICK))}
    recipe.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def one_line_error(result, code: int = 2) -> str:
    """The CLI's refusal: exit `code`, a single 'error: ...' line, no traceback."""
    output = result.output
    assert result.exit_code == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished run of the quick recipe (kd and scratch): its recipe file and its run folder."""
    from click.testing import CliRunner

    from edgekd.cli import main

    folder = tmp_path_factory.mktemp("finished")
    recipe = quick_recipe(folder)
    result = CliRunner().invoke(main, ["build", str(recipe), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    return recipe, folder / "runs" / "quick"


# ------------------------------------------------------------------------------------ the run folder
def test_run_folders_carry_the_marker_and_force_deletes_only_those(cli, tmp_path):
    recipe = quick_recipe(tmp_path, export={"targets": {}}, benchmark={"enabled": False})
    users = tmp_path / "runs" / "quick"
    users.mkdir(parents=True)
    (users / "thesis.tex").write_text("three years of work\n")
    (users / "data").mkdir()
    (users / "data" / "photo.png").write_bytes(b"\x89PNG not really")
    before = tree(users)

    for flags in ([], ["--force"], ["--resume"]):
        refused = cli("build", recipe, "--quiet", *flags)
        message = one_line_error(refused)
        assert "was not created by edgekd" in message and str(users) in message
        assert tree(users) == before, flags  # not a byte changed, nothing added
    assert "was not created by edgekd" in one_line_error(cli("validate", recipe, "--schema-only"))

    users.rename(tmp_path / "kept")
    assert cli("build", recipe, "--quiet").exit_code == 0
    marker = json.loads((users / ".edgekd-run").read_text())
    assert marker["edgekd"] == "run folder" and marker["name"] == "quick"
    (users / "train" / "stale.txt").write_text("left by an earlier build")
    assert cli("build", recipe, "--quiet", "--force").exit_code == 0  # edgekd's own folder: started over
    assert not (users / "train" / "stale.txt").exists() and (users / ".edgekd-run").is_file()


def test_a_symlinked_run_folder_is_refused_and_its_target_kept(cli, tmp_path):
    recipe = quick_recipe(tmp_path, export={"targets": {}}, benchmark={"enabled": False})
    assert cli("build", recipe, "--quiet", "--set", "name=real").exit_code == 0
    real = tmp_path / "runs" / "real"
    (tmp_path / "runs" / "quick").symlink_to(real, target_is_directory=True)
    before = tree(real)
    for flags in (["--force"], ["--resume"], []):
        message = one_line_error(cli("build", recipe, "--quiet", *flags))
        assert "is a symbolic link" in message
    assert tree(real) == before


def test_validate_refuses_a_system_folder_as_the_run_folder(cli, tmp_path):
    recipe = quick_recipe(tmp_path)
    message = one_line_error(
        cli("validate", recipe, "--schema-only", "--set", "output_dir=/", "--set", "name=etc")
    )
    assert "'/etc' already exists and was not created by edgekd" in message


def test_resuming_export_removes_a_linked_artifacts_folder_as_a_link_only(tmp_path):
    from edgekd.runfolder import delete_owned_folder

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    link = tmp_path / "run" / "artifacts"
    link.parent.mkdir()
    link.symlink_to(outside, target_is_directory=True)
    delete_owned_folder(link)
    assert not link.exists() and (outside / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------ edgekd export
def test_export_of_every_student_checkpoint_of_a_run(cli, finished_run, tmp_path):
    _, run_dir = finished_run
    for student in ("kd", "scratch"):
        out = tmp_path / student
        result = cli("export", run_dir / "models" / f"{student}.pt", "--format", "onnx", "-o", out)
        assert result.exit_code == 0, result.output[-3000:]
        assert (out / f"{student}_onnx_fp32.onnx").is_file()
        assert "ok (max" in result.output
    teacher = one_line_error(
        cli("export", run_dir / "models" / "teacher.pt", "--format", "onnx", "-o", tmp_path)
    )
    assert "is the run's teacher" in teacher


def test_export_of_a_checkpoint_with_a_recipe_with_and_without_model(cli, finished_run, tmp_path):
    recipe, run_dir = finished_run
    loose = tmp_path / "student.pt"
    loose.write_bytes((run_dir / "models" / "kd.pt").read_bytes())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    kd = next(model for model in metrics["models"] if model["name"] == "kd")
    model_args = [f"--model-arg={key}={value}" for key, value in kd["model_args"].items()]
    for extra in ([], ["--model", kd["arch"], *model_args]):
        out = tmp_path / ("with-model" if extra else "sized")
        result = cli("export", loose, "--recipe", recipe, "--format", "onnx", "-o", out, *extra)
        assert result.exit_code == 0, result.output[-3000:]
        assert (out / "student_onnx_fp32.onnx").is_file()
    assert "--recipe: required" in one_line_error(cli("export", loose, "--format", "onnx"))
    clash = cli(
        "export",
        loose,
        "--recipe",
        recipe,
        "--format",
        "onnx",
        "--model",
        "resnet8",
        "--model-arg",
        "in_channels=3",
    )
    assert "'in_channels' is set by edgekd" in one_line_error(clash)


# ------------------------------------------------------------------------------------ the file system
@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A real file system of its own at `folder` (mounted by root; skipped where mounting is not allowed)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): needs root in a VM or host"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_file_system(tmp_path):
    """A file system of 1.7 MB: room for the teacher and a student, not for every file of the run."""
    with tmpfs(tmp_path / "small", "size=1700k") as folder:
        yield folder


@pytest.fixture
def read_only_file_system(tmp_path):
    with tmpfs(tmp_path / "read-only", "size=100k,ro") as folder:
        yield folder


def test_a_full_disk_is_one_line_exit_1_and_leaves_no_half_file(cli, tmp_path, small_file_system):
    recipe = quick_recipe(
        tmp_path, output_dir=str(small_file_system), export={"targets": {"openvino": ["fp32"]}}
    )
    result = cli("build", recipe, "--quiet")
    message = one_line_error(result, code=1)
    assert "No space left on device" in message and "--resume" in message
    assert str(small_file_system) in message  # names the file it could not write
    assert not [path for path in small_file_system.rglob("*") if ".tmp-" in path.name]


def test_a_read_only_output_dir_is_one_line(cli, tmp_path, read_only_file_system):
    recipe = quick_recipe(tmp_path, output_dir=str(read_only_file_system / "runs"))
    message = one_line_error(cli("build", recipe, "--quiet"))
    assert "Read-only file system" in message and str(read_only_file_system) in message


# ------------------------------------------------------------------------------------ absurd values
@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.optimizer.lr=1.0e+300", "train.optimizer.lr: got 1e+300"),
        ("teacher.train.optimizer.lr=1.0e+300", "teacher.train.optimizer.lr: got 1e+300"),
        ("train.optimizer.weight_decay=1.0e+300", "train.optimizer.weight_decay"),
        ("teacher.model_args={in_channels: 1}", "teacher.model_args: 'in_channels' is set by edgekd"),
        ("student.model_args={num_classes: 3}", "student.model_args: 'num_classes' is set by edgekd"),
        (
            "distill.variants={v" + "a" * 300 + ": {method: kd}}",
            "a name of 301 characters; allowed: at most 64",
        ),
    ],
)
def test_absurd_values_are_refused_before_anything_trains(cli, tmp_path, override, words):
    recipe = quick_recipe(tmp_path)
    for command in (["validate"], ["build", "--quiet"]):
        message = one_line_error(cli(*command[:1], recipe, *command[1:], "--set", override))
        assert words in message, message
    assert not (tmp_path / "runs").exists()


def test_an_explicit_student_over_its_parameter_budget_is_refused_by_validate(cli, tmp_path):
    recipe = quick_recipe(tmp_path, student={"model": "resnet56", "budget": {"params": "50k"}})
    message = one_line_error(cli("validate", recipe))
    assert "student.model: resnet56 has 855" in message and "student.budget.params (50,000)" in message


def test_brackets_in_output_dir_are_printed_not_read_as_markup(cli, tmp_path):
    folder = tmp_path / "we[/]ird[bold]"
    recipe = quick_recipe(
        tmp_path, output_dir=str(folder), export={"targets": {}}, benchmark={"enabled": False}
    )
    result = cli("build", recipe, "--quiet")
    assert result.exit_code == 0, result.output[-3000:]
    assert f"run folder: {folder}/quick" in result.output


# ------------------------------------------------------------------------------------ edgekd bench
def test_bench_checks_its_json_path_and_input_size_before_timing(cli, finished_run, tmp_path):
    _, run_dir = finished_run
    # the shipped student's: kd's or scratch's, whichever validated better (export.models: best_val)
    (artifact,) = (run_dir / "artifacts").glob("*_onnx_fp32.onnx")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    message = one_line_error(cli("bench", artifact, "--json", blocker / "results.json"))
    assert "--json" in message and "is a file, not a folder" in message
    message = one_line_error(cli("bench", artifact, "--shape", "3,60000,60000"))
    assert "--shape" in message and "GiB" in message


# ------------------------------------------------------------------------------------ edgekd report
def _copy_run(run_dir: Path, where: Path) -> Path:
    import shutil

    copy = where / "copy"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.mark.parametrize("damage", ["deep-metrics", "deep-history", "history-types", "process-code"])
def test_report_of_a_corrupt_folder_is_one_line(cli, finished_run, tmp_path, damage):
    _, run_dir = finished_run
    copy = _copy_run(run_dir, tmp_path)
    stored = yaml.safe_load((copy / "recipe.yaml").read_text())
    stored["report"]["plots"] = True  # the plots read every history row and the process files
    (copy / "recipe.yaml").write_text(yaml.safe_dump(stored))
    if damage == "deep-metrics":
        (copy / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "deep-history":
        (copy / "history.json").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "history-types":
        history = json.loads((copy / "history.json").read_text())
        for rows in history.values():
            for row in rows:
                row["epoch"] = "one"
                row["val_acc"] = {"not": "a number"}
        (copy / "history.json").write_text(json.dumps(history))
    else:  # a DistPro process file path in metrics.json pointing at a pickle that runs code
        from test_errors import _checkpoints

        code = _checkpoints(tmp_path)["code"]
        metrics = json.loads((copy / "metrics.json").read_text())
        produced = {"name": "process", "path": str(code), "sha256": "0" * 64}
        stage = {"stage": "search", "epochs": 1, "select": "last", "best_epoch": 0, "best_val_acc": None}
        stage |= {"best_score": None, "trained_params": 1, "extra_params": 0, "train_time_s": 0.1}
        metrics["models"][1]["stages"] = [{**stage, "produces": [produced]}]
        (copy / "metrics.json").write_text(json.dumps(metrics))
    message = one_line_error(cli("report", copy))
    expected = {
        "deep-metrics": "metrics.json: nested too deeply",
        "deep-history": "history.json: nested too deeply",
        "history-types": "do not fit together as one run",
        "process-code": "could run code when unpickled; refused",
    }
    assert expected[damage] in message, message
    assert "weights_only" not in message


# ------------------------------------------------------------------------------------ a failed INT8 gate
def test_a_failed_int8_gate_shows_the_results_and_what_to_try(cli, tmp_path):
    export = {"targets": {"onnx": ["int8"]}, "calibration_images": 32, "parity": {"int8_min_top1": 1.0}}
    recipe = quick_recipe(tmp_path, export=export, benchmark={"enabled": False})
    result = cli("build", recipe, "--quiet")
    message = one_line_error(result, code=1)
    assert "onnx int8" in message and "outside tolerance" in message
    assert "export.int8.mode: qad" in message and "export.calibration_images" in message
    before_error = result.output.split("error: ")[0]
    assert "deployment artifacts" in before_error and "onnx int8" in before_error  # the table, first
    assert "run folder:" in before_error and (tmp_path / "runs" / "quick" / "report.md").is_file()


# ------------------------------------------------------------------------------------ machine load
def test_machine_load_is_computed_from_the_counters():
    from edgekd.bench.machine_load import CpuCounters, load_between

    before = CpuCounters(busy_s=100.0, steal_s=1.0, total_s=400.0, own_s=10.0, wall_s=50.0)
    quiet = CpuCounters(busy_s=102.0, steal_s=1.0, total_s=404.0, own_s=12.0, wall_s=52.0)
    busy = CpuCounters(busy_s=105.0, steal_s=1.2, total_s=404.0, own_s=12.0, wall_s=52.0)
    assert load_between(before, quiet).others_cores == 0.0 and not load_between(before, quiet).busy
    loaded = load_between(before, busy)
    assert loaded.others_cores == pytest.approx(1.5) and loaded.steal == pytest.approx(0.05) and loaded.busy
    assert load_between(None, busy).busy is False and load_between(None, busy).others_cores is None


def test_a_busy_machine_is_recorded_with_the_latency_and_warned_about(cli, finished_run, tmp_path):
    from edgekd.bench.machine_load import cpu_counters, load_warning, measured_load

    if cpu_counters() is None:
        pytest.skip("no /proc/stat here: the load cannot be read")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # the spinner is running (it never blocks), whatever the machine's speed
        with measured_load() as load:
            time.sleep(1.0)  # this process idle: whatever CPU is used, others use it
    finally:
        spinner.kill()
        spinner.wait()
    assert load[0].others_cores >= 0.5 and load[0].busy
    warning = load_warning([load[0].to_dict(), None])
    assert warning.startswith("The machine was busy while 1 of 2 latency measurement(s) ran")

    _, run_dir = finished_run
    copy = _copy_run(run_dir, tmp_path)
    metrics = json.loads((copy / "metrics.json").read_text())
    timed = [artifact for artifact in metrics["artifacts"] if artifact.get("latency")]
    assert timed and all(
        set(artifact["latency"]["machine_load"]) == {"others_cores", "steal", "loadavg_1m", "cores", "busy"}
        for artifact in timed
    )
    timed[0]["latency"]["machine_load"] = load[0].to_dict()
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert cli("report", copy).exit_code == 0
    assert "**Warning:** The machine was busy" in (copy / "report.md").read_text()
    assert "machine_busy" in (copy / "bench.csv").read_text().splitlines()[0]


def test_nproc_refuses_a_teacher_batch_that_does_not_split_before_any_process_starts(cli, tmp_path):
    recipe = quick_recipe(tmp_path, teacher={"model": "resnet8", "train": {"epochs": 1, "batch_size": 63}})
    message = one_line_error(cli("build", recipe, "--quiet", "--nproc", "2"))
    assert "teacher.train.batch_size" in message and "does not split evenly over 2 processes" in message
    assert not (tmp_path / "runs").exists()
