"""The deployment stage end to end: export from a real build, the parity gate, and the standalone commands."""

from __future__ import annotations

import json
import pathlib
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgekd.config.deploy import ParityConfig
from edgekd.deploy import check_artifact
from edgekd.exporters import Artifact
from edgekd.runtime import logits_of

pytestmark = pytest.mark.slow

# The tiny 2-epoch student has small logit margins, so INT8 flips more top-1 answers than a trained one.
EXPORT = {
    "targets": {"onnx": ["fp32", "int8"], "openvino": ["fp32", "fp16", "int8"]},
    "calibration_images": 64,
    "parity": {"int8_min_top1": 0.8, "int8_max_acc_drop": 10.0},
}
FAST_BENCH = {
    "batches": [1, 4],
    "threads": 1,
    "warmup_iters": 2,
    "warmup_s": 0.0,
    "min_iters": 5,
    "min_time_s": 0.0,
}


@pytest.fixture(scope="module")
def built_run(tmp_path_factory):
    """One real quick build with every CPU artifact, shared by the tests of this module."""
    from model_helpers import build_tiny_kd_run

    return build_tiny_kd_run(tmp_path_factory.mktemp("deploy"), EXPORT, FAST_BENCH)


def test_build_writes_checked_and_timed_artifacts(built_run):
    run_dir, output, _ = built_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    names = [record["name"] for record in metrics["artifacts"]]
    assert names == [
        "pytorch fp32",
        "onnx fp32",
        "onnx int8",
        "openvino fp32",
        "openvino fp16",
        "openvino int8",
    ]
    runs_on = [record["runs_on"] for record in metrics["artifacts"]]
    assert runs_on == ["pytorch cpu", *["onnxruntime CPU EP"] * 2, *["openvino cpu"] * 3]
    for record in metrics["artifacts"]:
        assert record["status"] == "ok", record
        assert [timing["batch"] for timing in record["latency"]["batches"]] == [1, 4]
        if record["format"] != "pytorch":
            assert record["parity"]["failure"] is None
            assert record["parity"]["top1_agreement"] >= 0.8
    fp32 = metrics["artifacts"][1]
    assert fp32["parity"]["max_abs"] < 1e-3 and fp32["test_acc_drop"] == 0.0
    assert "deployment artifacts" in output and "openvino int8" in output
    csv_lines = (run_dir / "bench.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 6 * 2  # header + (artifacts x batch sizes)
    report = (run_dir / "report.md").read_text()
    assert "## Deployment artifacts" in report and "accuracy_vs_latency.png" in report
    assert (run_dir / "accuracy_vs_latency.png").is_file()


def test_artifacts_open_outside_edgekd(built_run):
    run_dir, _, _ = built_run
    onnx_files = sorted((run_dir / "artifacts").glob("*.onnx"))
    assert len(onnx_files) == 2
    for path in onnx_files:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shape = session.get_inputs()[0].shape
        assert shape[0] not in (1, 2)  # the batch dimension is dynamic
        out = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 1, 8, 8), np.float32)})[0]
        assert out.shape == (3, 10)
    xml = run_dir / "artifacts" / "kd_openvino_fp32.xml"
    benchmark_app = subprocess.run(
        ["benchmark_app", "-m", str(xml), "-hint", "latency", "-t", "1", "-shape", "[1,1,8,8]"],
        capture_output=True,
        text=True,
        timeout=600,  # a ceiling against a hang, not a speed limit (the machine may be busy)
    )
    assert benchmark_app.returncode == 0, benchmark_app.stdout[-2000:] + benchmark_app.stderr[-2000:]
    assert "Median" in benchmark_app.stdout


def _tampered_copy(artifact_path, tmp_path):
    """The same ONNX with one weight tensor's sign flipped: a real, silent disagreement."""
    model = onnx.load(str(artifact_path))
    largest = max(model.graph.initializer, key=lambda tensor: np.prod(tensor.dims))
    values = numpy_helper.to_array(largest)
    largest.CopyFrom(numpy_helper.from_array(-values, largest.name))
    path = tmp_path / "tampered.onnx"
    onnx.save(model, str(path))
    return path


def _student_reference(built_run):
    """The built run's data, evaluation images and the PyTorch student's reference logits on them."""
    from edgekd.bench import TorchRunner
    from edgekd.config.loading import load_recipe
    from edgekd.data import build_data
    from edgekd.deploy import evaluation_data
    from edgekd.models import create_model
    from edgekd.train.checkpoint import load_weights

    run_dir, _, _ = built_run
    recipe = load_recipe(run_dir / "recipe.yaml")
    data = build_data(recipe.data, subset=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    main = next(record for record in metrics["models"] if record.get("is_main"))
    student = create_model(main["arch"], 10, 1, **main["model_args"])
    load_weights(student, main["checkpoint"], "student", main["arch"])
    evaluation = evaluation_data(data, recipe.export)
    reference = {"parity": logits_of(TorchRunner(student.eval()), evaluation.parity_images)}
    return run_dir, data, evaluation, reference


def test_parity_gate_catches_a_disagreeing_artifact(built_run, tmp_path):
    from edgekd.bench import OnnxRuntimeRunner
    from edgekd.runtime import model_io

    run_dir, data, evaluation, reference = _student_reference(built_run)

    path = _tampered_copy(run_dir / "artifacts" / "kd_onnx_fp32.onnx", tmp_path)
    artifact = Artifact(path, "onnx", "fp32", model_io(data), path.stat().st_size)
    record = check_artifact(artifact, OnnxRuntimeRunner(path), reference, evaluation, ParityConfig(), 90.0)
    assert record.status == "parity failed"
    assert "max_abs" in record.parity["failure"] and "1.000e-03" in record.parity["failure"]


def test_int8_accuracy_gate_and_passed_are_one_verdict(built_run):
    """An INT8 artifact whose logits agree but whose accuracy drop is over the gate: `passed` must say it
    failed, as the build's exit code does (it once said true beside the failure)."""
    from edgekd.bench import OnnxRuntimeRunner
    from edgekd.deploy import parity_failures
    from edgekd.runtime import model_io

    run_dir, data, evaluation, reference = _student_reference(built_run)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    path = run_dir / "artifacts" / "kd_onnx_int8.onnx"
    artifact = Artifact(path, "onnx", "int8", model_io(data), path.stat().st_size)
    gate = ParityConfig(int8_min_top1=0.0, int8_max_acc_drop=0.5)
    # The PyTorch student said to score 100 %: the real artifact's accuracy is then a drop over the gate.
    record = check_artifact(artifact, OnnxRuntimeRunner(path), reference, evaluation, gate, 100.0)
    assert record.parity["logits_passed"] is True
    assert record.parity["passed"] is False and "int8_max_acc_drop" in record.parity["failure"]
    assert record.status == "parity failed" and parity_failures([record])
    for stored in metrics["artifacts"]:  # the build's own records agree with themselves too
        if stored.get("parity"):
            assert stored["parity"]["passed"] == (stored["parity"]["failure"] is None)


def test_too_strict_tolerance_fails_the_build_with_exit_1(cli, write_recipe):
    export = {"targets": {"onnx": ["fp32"]}, "parity": {"fp32_max_abs": 1e-12}}
    path = write_recipe(export=export, benchmark={"enabled": False}, distill={"method": "kd"})
    result = cli("build", path, "--quiet")
    assert result.exit_code == 1
    # the summary tables first (the results are written), then the one error line, last
    *tables, error = result.output.strip().splitlines()
    assert error.startswith("error: parity:") and "onnx fp32" in error and "max_abs" in error
    assert any("deployment artifacts" in line for line in tables)


def test_standalone_export_and_bench(built_run, cli, tmp_path):
    run_dir, _, _ = built_run
    out = tmp_path / "out"
    result = cli(
        "export", run_dir, "--format", "onnx", "--precision", "fp32", "--precision", "fp16", "-o", out
    )
    assert result.exit_code == 0, result.output
    exported = out / "kd_onnx_fp32.onnx"
    assert exported.is_file() and (out / "kd_onnx_fp16.onnx").is_file()
    # Both checked against PyTorch on the CPU provider, and the table says so.
    assert "onnx fp16" in result.output and result.output.count("onnxruntime CPU EP") == 2
    report = tmp_path / "bench.json"
    args = ["--batch", "1", "--batch", "2", "--min-iters", "3", "--min-time-s", "0", "--warmup-s", "0"]
    result = cli("bench", exported, *args, "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert [timing["batch"] for timing in data["latency"]["batches"]] == [1, 2]
    assert data["environment"]["cpu"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "missing_run", "--format", "onnx"], "missing_run"),
        (["export", "RUN", "--format", "onnx", "--precision", "bf16"], "bf16"),
        (["bench", "missing.onnx"], "missing.onnx"),
        (["bench", "CORRUPT"], "corrupt.onnx"),
        (["bench", "ENGINE"], "tensorrt"),
    ],
)
def test_bad_input_is_one_line_exit_2(built_run, cli, tmp_path, args, needle):
    run_dir, _, _ = built_run
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    mapping = {"RUN": str(run_dir), "CORRUPT": str(corrupt), "ENGINE": str(engine)}
    result = cli(*[mapping.get(arg, arg) for arg in args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and needle in result.output.lower()


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_tensorrt_targets_without_tensorrt_leave_a_trtexec_recipe(cli, write_recipe, tmp_path):
    export = {"targets": {"tensorrt": ["fp16", "int8"]}, "calibration_images": 32}
    path = write_recipe(export=export, benchmark={"enabled": False}, distill={"method": "kd"})
    result = cli("build", path, "--quiet")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = {record["name"]: record for record in metrics["artifacts"]}
    for precision in ("fp16", "int8"):
        record = rows[f"tensorrt {precision}"]
        assert record["status"].startswith("not built")
        command = record["details"]["trtexec"]
        assert command.startswith("trtexec --onnx=") and f"--{precision}" in command
        assert "--minShapes=images:1x1x8x8" in command
        assert pathlib.Path(record["details"]["onnx"]).is_file()  # the file trtexec needs is there
    assert "trtexec --onnx=" in (run_dir / "report.md").read_text()
