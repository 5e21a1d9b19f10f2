"""ONNX artifacts on ONNX Runtime's CUDA execution provider (onnxruntime-gpu): the refusal where it cannot run,
the runner and the latency harness on a GPU where it can, and where the provider is recorded.

Needs no OpenVINO, so that the GPU test also runs on a machine with only torch and onnxruntime-gpu.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from model_helpers import with_batchnorm_statistics

from edgekd.bench import LatencyConfig, OnnxRuntimeRunner, check_parity, measure_latency, runner_for
from edgekd.bench.runners.onnxruntime_runner import BOUND_CALL, BOUND_CALL_ON_GPU
from edgekd.errors import EdgekdError, RecipeError
from edgekd.exporters import ModelIO, get_exporter
from edgekd.formats import PARITY_DEFAULTS
from edgekd.models import create_model
from edgekd.preflight import check_onnxruntime_device, onnxruntime_cuda_missing
from edgekd.records import ArtifactRecord
from edgekd.report.tables import ARTIFACT_COLUMNS, artifact_rows, bench_csv_rows
from edgekd.runtime import file_runner
from edgekd.sizing.fingerprint import LatencyTarget

CUDA_READY = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
NO_CUDA = "onnxruntime's CUDAExecutionProvider and a CUDA GPU are present: the GPU test below runs instead"
IO = ModelIO(3, 32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(f"class {k}" for k in range(10)))
QUICK = {"warmup_iters": 2, "warmup_s": 0.0, "min_iters": 5, "min_time_s": 0.0}
ONNX_EXPORT = {"targets": {"onnx": ["fp32"]}}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The CIFAR-size WRN-16-2 student with random weights and BatchNorm statistics that are not the identity."""
    torch.manual_seed(0)
    net = create_model("wrn_16_2", num_classes=10, in_channels=3)
    return with_batchnorm_statistics(net)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, *IO.image_shape), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(model, images) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ort_cuda")
    fp32 = get_exporter("onnx").export(model, IO, "fp32", folder)
    fp16 = get_exporter("onnx").export(model, IO, "fp16", folder, onnx_fp32=fp32)
    return {"fp32": fp32, "fp16": fp16}


def one_line(message: str) -> str:
    assert message and "\n" not in message.strip(), message
    return message


# ---------------------------------------------------------------------------------------- where it cannot run
@pytest.mark.skipif(CUDA_READY, reason=NO_CUDA)
def test_the_runner_refuses_cuda_instead_of_falling_back_to_the_cpu(artifacts):
    runner = runner_for(artifacts["fp32"].path, device="cuda")
    with pytest.raises(EdgekdError) as caught:
        runner.load()
    message = one_line(str(caught.value))
    assert "CUDAExecutionProvider" in message and "device='cpu'" in message
    assert not runner.loaded


@pytest.mark.skipif(CUDA_READY, reason=NO_CUDA)
def test_the_preflight_names_the_field_the_value_and_what_is_allowed():
    assert onnxruntime_cuda_missing() is not None
    check_onnxruntime_device("cpu")  # always allowed
    with pytest.raises(RecipeError) as caught:
        check_onnxruntime_device("cuda")
    message = one_line(str(caught.value))
    assert caught.value.field == "benchmark.onnxruntime_device"
    assert message.startswith("benchmark.onnxruntime_device: got 'cuda', but ")
    assert message.endswith("; allowed here: cpu")


@pytest.mark.skipif(CUDA_READY, reason=NO_CUDA)
def test_a_build_asking_for_cuda_stops_before_training_with_exit_2(cli, write_recipe, tmp_path):
    path = write_recipe(export=ONNX_EXPORT, benchmark={"onnxruntime_device": "cuda"})
    result = cli("build", path, "--quiet")
    assert result.exit_code == 2, result.output
    assert "benchmark.onnxruntime_device: got 'cuda'" in one_line(result.output)
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    # The recipe itself is valid (it may be meant for a GPU machine); only a check of this machine refuses it.
    assert cli("validate", path, "--schema-only").exit_code == 0
    result = cli("validate", path)
    assert result.exit_code == 2 and "benchmark.onnxruntime_device" in one_line(result.output)


@pytest.mark.skipif(CUDA_READY, reason=NO_CUDA)
def test_bench_on_cuda_without_it_is_one_line_exit_2(cli, artifacts):
    result = cli("bench", artifacts["fp32"].path, "--device", "cuda", "--min-iters", "1", "--min-time-s", "0")
    assert result.exit_code == 2 and "CUDAExecutionProvider" in one_line(result.output)


def test_a_device_no_runtime_has_is_refused_by_the_recipe(cli, write_recipe):
    path = write_recipe(export=ONNX_EXPORT, benchmark={"onnxruntime_device": "gpu"})
    result = cli("validate", path, "--schema-only")
    assert result.exit_code == 2
    message = one_line(result.output)
    assert "benchmark.onnxruntime_device" in message and "'cpu' or 'cuda'" in message


# ------------------------------------------------------------------------------------ what ran it, recorded
def test_the_cpu_provider_is_named_in_the_runner_the_records_and_the_tables(artifacts, images):
    runner = file_runner(artifacts["fp16"].path, "onnx", "fp16", threads=1)  # the CPU provider by default
    result = measure_latency(runner, images[:4], LatencyConfig(batches=(1, 4), **QUICK))
    assert runner.runs_on() == "onnxruntime CPU EP" and result.timed_call == BOUND_CALL
    assert (
        result.runner["execution_provider"] == "CPUExecutionProvider" and result.runner["precision"] == "fp16"
    )
    record = ArtifactRecord(
        name="onnx fp16",
        format="onnx",
        precision="fp16",
        path=str(artifacts["fp16"].path),
        size_bytes=artifacts["fp16"].size_bytes,
        status="ok",
        runs_on=runner.runs_on(),
        latency=result.to_dict(),
    )
    rows = artifact_rows([record])
    assert [row[ARTIFACT_COLUMNS.index("runs on")] for row in rows] == ["onnxruntime CPU EP", ""]
    assert {row["runs_on"] for row in bench_csv_rows([record])} == {"onnxruntime CPU EP"}
    # metrics.json written before the field existed still reads, with nothing to show
    old = json.loads(record.model_dump_json(exclude={"runs_on"}))
    assert artifact_rows([ArtifactRecord(**old)])[0][ARTIFACT_COLUMNS.index("runs on")] == "-"


def test_a_latency_target_on_the_cuda_provider_is_another_cache_key():
    target = LatencyTarget("resnet", (3, 32, 32), 10, "onnxruntime", "fp16", 1, None, "p50", {}, {})
    on_gpu = LatencyTarget("resnet", (3, 32, 32), 10, "onnxruntime", "fp16", 1, None, "p50", {}, {}, "cuda")
    assert "device" not in target.key()  # tables timed before the setting existed keep their key
    assert on_gpu.key() == {**target.key(), "device": "cuda"}
    assert on_gpu.describe() == "onnxruntime on cuda fp16, batch 1, default threads"


# ------------------------------------------------------------------------------------------------ on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_READY, reason="needs onnxruntime-gpu (CUDAExecutionProvider) and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_on_the_cuda_provider_matches_torch_and_is_timed_there(artifacts, images, reference, precision):
    runner = OnnxRuntimeRunner(artifacts[precision].path, device="cuda")
    result = measure_latency(runner, images, LatencyConfig(batches=(1, 64), **QUICK))
    assert runner.execution_provider == "CUDAExecutionProvider" and runner.precision == precision
    assert result.runner["runs_on"] == "onnxruntime CUDA EP"
    assert result.runner["provider_options"]["use_tf32"] == "0"
    # The harness compared the bound call (batch and logits in CUDA memory) with run() at every batch size.
    assert result.timed_call == BOUND_CALL_ON_GPU
    assert [timing.batch for timing in result.batches] == [1, 64]
    logits = runner.run(images)
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    parity = check_parity(reference, logits, precision)
    assert parity.passed, parity.failure
    assert parity.max_abs <= PARITY_DEFAULTS[precision].max_abs


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_READY, reason="needs onnxruntime-gpu (CUDAExecutionProvider) and a CUDA GPU")
def test_fp16_on_the_gpu_computes_in_half_precision(artifacts, images):
    """The FP16 file does not secretly run as FP32: its logits differ from the FP32 file's on the same GPU."""
    logits = {}
    for precision in ("fp32", "fp16"):
        runner = file_runner(
            artifacts[precision].path, "onnx", precision, threads=None, onnxruntime_device="cuda"
        )
        runner.load()
        assert runner.runs_on() == "onnxruntime CUDA EP"
        logits[precision] = runner.run(images)
    difference = float(np.abs(logits["fp16"] - logits["fp32"]).max())
    assert 0 < difference <= PARITY_DEFAULTS["fp16"].max_abs
