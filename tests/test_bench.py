"""The benchmark side: runners against PyTorch, runner selection and its errors, the latency harness,
parity, accuracy and the environment record. Real small models (a CIFAR ResNet-8 on 8×8 digits) and real
files; no assertion on how fast anything is, only on what the harness reports."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import with_batchnorm_statistics
from sklearn.datasets import load_digits

from edgekd.bench import (
    DEFAULT_TOLERANCES,
    BoundInference,
    LatencyConfig,
    OnnxRuntimeRunner,
    OpenVinoRunner,
    ParityError,
    ParityTolerance,
    Runner,
    TensorRTRunner,
    TorchRunner,
    batched_logits,
    check_parity,
    environment_record,
    evaluate_accuracy,
    measure_latency,
    runner_for,
    top1_accuracy,
)
from edgekd.bench.environment import physical_cores
from edgekd.bench.runners.base import UNBOUND_CALL
from edgekd.errors import EdgekdError
from edgekd.models import create_model

ov = pytest.importorskip("openvino")

IMAGE_SHAPE = (1, 8, 8)
CLASSES = 10
# A fast harness config: structure is tested, not speed.
QUICK = {"warmup_iters": 2, "warmup_s": 0.0, "min_iters": 5, "min_time_s": 0.0}


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=CLASSES, in_channels=1, width=8)
    return with_batchnorm_statistics(net)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """120 real digits, normalized as edgekd feeds them (pixels / 16, then mean/std)."""
    data = load_digits()
    images = (data.images[:120] / 16.0).astype(np.float32)[:, None]
    images = (images - images.mean()) / images.std()
    return np.ascontiguousarray(images, dtype=np.float32), data.target[:120].astype(np.int64)


@pytest.fixture(scope="module")
def reference(model, digits) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(digits[0])).numpy()


@pytest.fixture(scope="module")
def files(model, tmp_path_factory) -> dict[str, Path]:
    """The model as ONNX (dynamic batch), as an OpenVINO IR, and as an IR with the batch fixed at 1."""
    folder = tmp_path_factory.mktemp("bench_models")
    example = torch.zeros(2, *IMAGE_SHAPE)
    onnx_path = folder / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(onnx_path),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    ir = ov.convert_model(str(onnx_path))
    ir_path = folder / "model.xml"
    ov.save_model(ir, str(ir_path), compress_to_fp16=False)
    static = ov.convert_model(str(onnx_path))
    static.reshape([1, *IMAGE_SHAPE])
    static_path = folder / "static.xml"
    ov.save_model(static, str(static_path), compress_to_fp16=False)
    return {"onnx": onnx_path, "ir": ir_path, "static_ir": static_path}


class CountingRunner(Runner):
    """Returns fixed logits and counts calls, to check what the harness does without a backend."""

    backend = "counting"

    def __init__(self, threads: int | None = None):
        super().__init__(threads=threads)
        self.loads = 0
        self.calls = 0

    def _load(self) -> None:
        self.loads += 1

    def run(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.zeros((len(images), CLASSES), dtype=np.float32)


class MisboundRunner(CountingRunner):
    """A runner whose bound call computes something other than run(): its speed must not be reported."""

    backend = "misbound"

    def bind_inference(self, images: np.ndarray) -> BoundInference:
        wrong = np.ones((len(images), CLASSES), dtype=np.float32)
        return BoundInference(infer=lambda: None, logits=lambda: wrong, timed_call="nothing")


class LabelRunner(Runner):
    """Predicts the label it is told for each image (by the image's first pixel), to test accuracy."""

    backend = "labels"

    def _load(self) -> None:
        pass

    def run(self, images: np.ndarray) -> np.ndarray:
        logits = np.zeros((len(images), CLASSES), dtype=np.float32)
        logits[np.arange(len(images)), images[:, 0, 0, 0].astype(int)] = 1.0
        return logits


def one_line_error(call) -> str:
    with pytest.raises(EdgekdError) as caught:
        call()
    message = str(caught.value)
    assert message and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------- runners
def test_torch_runner_matches_the_model_and_keeps_its_thread_count(model, digits, reference):
    previous = torch.get_num_threads()
    try:
        runner = TorchRunner(model, threads=1)
        runner.load()
        torch.set_num_threads(2)  # something else changes the process-wide setting...
        np.testing.assert_array_equal(runner.run(digits[0]), reference)
        assert torch.get_num_threads() == 1  # ...and the runner puts its own back
        assert runner.describe()["threads"] == 1
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("batch", [1, 7])
def test_onnxruntime_runner_matches_torch_at_any_batch(files, digits, reference, batch):
    runner = runner_for(files["onnx"], threads=2)
    assert isinstance(runner, OnnxRuntimeRunner)
    runner.load()
    logits = runner.run(digits[0][:batch])
    assert logits.shape == (batch, CLASSES) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference[:batch], atol=1e-4, rtol=0)
    info = runner.describe()
    assert (info["intra_op_threads"], info["inter_op_threads"], info["execution_mode"]) == (
        2,
        1,
        "sequential",
    )


@pytest.mark.parametrize("key", ["ir", "onnx"])
def test_openvino_runner_matches_torch_in_f32(files, digits, reference, key):
    runner = runner_for(files[key], backend="openvino", threads=2)
    assert isinstance(runner, OpenVinoRunner)
    runner.load()
    for batch in (1, 5, len(reference)):
        logits = runner.run(digits[0][:batch])
        # f32 on every CPU: the plugin's own bf16 default would miss this by orders of magnitude.
        np.testing.assert_allclose(logits, reference[:batch], atol=1e-4, rtol=0)
    read_only = np.broadcast_to(digits[0][:1], (3, *IMAGE_SHAPE))  # not writeable: shared memory refuses it
    np.testing.assert_allclose(runner.run(read_only), reference[[0, 0, 0]], atol=1e-4, rtol=0)
    info = runner.describe()
    assert info["compiled"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert info["compiled"]["PERFORMANCE_HINT"] == "LATENCY"
    assert info["threads"] == 2 and info["streams"] == 1


def test_openvino_runner_makes_a_fixed_batch_dynamic(files, digits, reference):
    runner = OpenVinoRunner(files["static_ir"], threads=1)
    runner.load()
    assert runner.describe()["dynamic_batch"] is True
    np.testing.assert_allclose(runner.run(digits[0][:6]), reference[:6], atol=1e-4, rtol=0)


def test_openvino_runner_times_a_batch_size_through_a_static_copy(files, digits, reference):
    runner = OpenVinoRunner(files["ir"], threads=1)
    result = measure_latency(runner, digits[0], **{**QUICK, "batches": (1, 4)})
    # The harness fixed each timed batch size, as a deployed static model runs it; other sizes still run.
    assert runner.describe()["static_batches"] == [1, 4] and result.at_batch(4).iterations >= 1
    for batch in (1, 4, 7):
        np.testing.assert_allclose(runner.run(digits[0][:batch]), reference[:batch], atol=1e-4, rtol=0)


def test_openvino_runner_follows_the_artifacts_precision(model, digits, reference, tmp_path):
    from edgekd.exporters import ModelIO, get_exporter

    io = ModelIO(*IMAGE_SHAPE, mean=(0.3,), std=(0.4,), class_names=tuple(str(i) for i in range(CLASSES)))
    artifact = get_exporter("openvino").export(model, io, "fp16", tmp_path)
    runner = runner_for(artifact.path, threads=2)  # precision read from the IR's metadata
    runner.load()
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert runner.precision == "fp16"
    assert runner.inference_precision == ("f16" if "FP16" in capabilities else "f32")
    result = check_parity(reference, batched_logits(runner, digits[0]), "fp16")
    assert result.passed, result.failure
    explicit = OpenVinoRunner(artifact.path, precision="fp16", inference_precision="f32")
    explicit.load()
    assert explicit.describe()["compiled"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_runner_for_picks_the_backend_by_suffix(files, tmp_path):
    assert isinstance(runner_for(files["onnx"]), OnnxRuntimeRunner)
    assert isinstance(runner_for(files["ir"]), OpenVinoRunner)
    assert isinstance(runner_for(files["onnx"], backend="openvino"), OpenVinoRunner)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" in one_line_error(lambda: runner_for(engine))
    else:
        assert isinstance(runner_for(engine), TensorRTRunner)


def test_runner_for_reports_bad_input_in_one_line(files, tmp_path):
    assert "no such model file" in one_line_error(lambda: runner_for(tmp_path / "missing.onnx"))
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    assert "unknown model suffix" in one_line_error(lambda: runner_for(weights))
    assert "'tflite'" in one_line_error(lambda: runner_for(files["onnx"], backend="tflite"))
    assert "TorchRunner" in one_line_error(lambda: runner_for(files["onnx"], backend="pytorch"))
    assert "cannot read" in one_line_error(lambda: runner_for(files["ir"], backend="onnxruntime"))
    assert "threds" in one_line_error(lambda: runner_for(files["onnx"], threds=2))
    assert "threads" in one_line_error(lambda: runner_for(files["onnx"], threads=0))
    assert "precision" in one_line_error(lambda: runner_for(files["ir"], precision="fp8"))


def test_corrupt_files_fail_on_load_with_one_line(files, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    assert "onnxruntime cannot load it" in one_line_error(runner_for(corrupt).load)
    assert "cannot be read as ONNX" in one_line_error(runner_for(corrupt, backend="openvino").load)
    broken_xml = tmp_path / "broken.xml"
    broken_xml.write_text("<net><layers>")
    broken_xml.with_suffix(".bin").write_bytes(b"\0" * 16)
    assert "OpenVINO cannot read it" in one_line_error(runner_for(broken_xml).load)
    text_xml = tmp_path / "text.xml"  # OpenVINO's other frontends would print parser noise for it
    text_xml.write_text("this is not xml")
    assert "is not an OpenVINO IR" in one_line_error(runner_for(text_xml).load)
    lonely_xml = tmp_path / "lonely.xml"  # an IR whose .bin is missing
    lonely_xml.write_text(files["ir"].read_text())
    message = one_line_error(runner_for(lonely_xml).load)
    assert "bin" in message and "Exception from" not in message  # OpenVINO's source location is dropped


def test_running_before_load_is_an_error(files):
    assert "load()" in one_line_error(lambda: runner_for(files["onnx"]).run(np.zeros((1, *IMAGE_SHAPE))))


def test_wrong_input_shape_names_the_expected_one(files):
    runner = runner_for(files["onnx"])
    runner.load()
    assert "expects" in one_line_error(lambda: runner.run(np.zeros((1, 3, 8, 8), np.float32)))


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
    reason="TensorRT and a GPU are present: the real test below runs instead",
)
def test_tensorrt_runner_without_tensorrt_or_gpu_says_so(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    message = one_line_error(TensorRTRunner(engine).load)
    assert "tensorrt" in message.lower() or "GPU" in message


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
    reason="needs the tensorrt package and a CUDA GPU",
)
def test_tensorrt_runner_matches_torch(files, digits, reference, tmp_path):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(files["onnx"].read_bytes()), parser.get_error(0)
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)  # TF32 would round FP32 matmuls to 10-bit mantissas
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, *IMAGE_SHAPE), (8, *IMAGE_SHAPE), (len(reference), *IMAGE_SHAPE))
    config.add_optimization_profile(profile)
    engine = tmp_path / "model.engine"
    engine.write_bytes(bytes(builder.build_serialized_network(network, config)))
    runner = runner_for(engine)
    runner.load()
    for batch in (1, 5, len(reference)):
        np.testing.assert_allclose(runner.run(digits[0][:batch]), reference[:batch], atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------- latency
def test_latency_harness_reports_cold_start_percentiles_and_throughput(model):
    runner = TorchRunner(model)
    result = measure_latency(runner, IMAGE_SHAPE, LatencyConfig(batches=(1, 4), threads=1, **QUICK))
    assert result.threads == 1 and runner.threads == 1
    assert result.cold_start is not None and result.cold_start.batch == 1
    assert result.cold_start.load_ms >= 0 and result.cold_start.first_inference_ms > 0
    assert [timing.batch for timing in result.batches] == [1, 4]
    for timing in result.batches:
        assert timing.iterations == QUICK["min_iters"] and timing.warmup_iters == QUICK["warmup_iters"]
        assert timing.min_ms <= timing.p50_ms <= timing.p90_ms <= timing.p99_ms <= timing.max_ms
        assert timing.min_ms <= timing.mean_ms <= timing.max_ms and timing.std_ms >= 0
        # Images per second over the whole timed loop, which is at least the sum of the timed calls.
        assert timing.throughput == pytest.approx(timing.batch * timing.iterations / timing.timed_s)
        assert timing.timed_s * 1000 >= timing.mean_ms * timing.iterations * 0.999
    data = json.loads(json.dumps(result.to_dict()))
    assert data["threads"] == 1 and data["cold_start"]["total_ms"] >= data["cold_start"]["load_ms"]
    assert set(data["batches"][0]) >= {
        "batch",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "mean_ms",
        "std_ms",
        "throughput",
    }
    assert result.at_batch(4).batch == 4


def test_latency_harness_honours_min_iters_and_min_time():
    runner = CountingRunner()
    result = measure_latency(
        runner, np.zeros((3, *IMAGE_SHAPE), np.float32), batches=(1, 5), warmup_iters=3, min_iters=11
    )
    # Keyword overrides start from the defaults: warm-up and timing last at least 0.5 s and 2 s.
    config = result.config
    assert (config.warmup_s, config.min_time_s) == (0.5, 2.0)
    for timing in result.batches:
        assert timing.iterations >= 11 and timing.timed_s >= 2.0
        assert timing.warmup_iters >= 3 and timing.warmup_s >= 0.5
    runner = CountingRunner()
    result = measure_latency(runner, IMAGE_SHAPE, batches=(2,), **QUICK)
    # cold start (1) + output check (1) + warm-up + timed runs: nothing more, nothing less.
    assert runner.loads == 1 and runner.calls == 2 + QUICK["warmup_iters"] + QUICK["min_iters"]


def test_latency_harness_on_a_loaded_runner_has_no_cold_start(files):
    runner = runner_for(files["onnx"], threads=1)
    runner.load()
    result = measure_latency(runner, IMAGE_SHAPE, **QUICK)
    assert result.cold_start is None and result.threads == 1
    assert "threads=1" in one_line_error(lambda: measure_latency(runner, IMAGE_SHAPE, threads=2, **QUICK))


def cpu_runner(kind: str, model: torch.nn.Module, files: dict[str, Path]) -> Runner:
    """A loaded runner of each CPU backend on the test model."""
    runner = TorchRunner(model, threads=1) if kind == "pytorch" else runner_for(files[kind], threads=1)
    runner.load()
    return runner


CPU_RUNNERS = ["pytorch", "onnx", "ir", "static_ir"]


@pytest.mark.parametrize("kind", CPU_RUNNERS)
def test_the_bound_call_computes_what_run_computes(model, files, digits, reference, kind):
    runner = cpu_runner(kind, model, files)
    batch = 1 if kind == "static_ir" else 4
    runner.prepare_batch(batch)
    images = digits[0][:batch].copy()
    bound = runner.bind_inference(images)
    for _ in range(3):  # as the harness times it: called again and again on the one bound batch
        bound.infer()
    np.testing.assert_array_equal(bound.logits(), runner.run(images))
    np.testing.assert_allclose(bound.logits(), reference[:batch], atol=1e-4, rtol=0)
    # On the CPU every runner reads the bound array in place: new images in it show each call computes.
    images[:] = digits[0][batch : 2 * batch]
    bound = runner.bind_inference(images)  # run() above may have taken the request the first one held
    bound.infer()
    np.testing.assert_allclose(bound.logits(), reference[batch : 2 * batch], atol=1e-4, rtol=0)
    assert bound.timed_call.startswith("bound infer")


@pytest.mark.parametrize("kind", CPU_RUNNERS)
def test_binding_a_wrong_shaped_batch_is_a_one_line_error(model, files, kind):
    runner = cpu_runner(kind, model, files)
    message = one_line_error(lambda: runner.bind_inference(np.zeros((1, 3, 8, 8), np.float32)))
    assert "(1, 3, 8, 8)" in message
    unloaded = TorchRunner(model) if kind == "pytorch" else runner_for(files[kind])
    assert "load()" in one_line_error(lambda: unloaded.bind_inference(np.zeros((1, *IMAGE_SHAPE))))


@pytest.mark.parametrize("kind", ["onnx", "ir"])
def test_the_harness_times_the_bound_call_and_records_it(files, kind):
    runner = runner_for(files[kind], threads=1)
    data = json.loads(json.dumps(measure_latency(runner, IMAGE_SHAPE, batches=(1, 3), **QUICK).to_dict()))
    assert data["timed_call"].startswith("bound infer") and "no conversion" in data["timed_call"]
    assert [timing["batch"] for timing in data["batches"]] == [1, 3]
    # A runner that cannot bind is timed through run(), and the result says so.
    assert measure_latency(CountingRunner(), IMAGE_SHAPE, **QUICK).timed_call == UNBOUND_CALL


def test_the_harness_refuses_a_bound_call_that_does_not_compute_the_model():
    message = one_line_error(lambda: measure_latency(MisboundRunner(), IMAGE_SHAPE, **QUICK))
    assert "misbound" in message and "run()" in message


def test_latency_config_rejects_bad_values():
    assert "batches" in one_line_error(lambda: LatencyConfig(batches=(0,)))
    assert "min_iters" in one_line_error(lambda: LatencyConfig(min_iters=0))
    assert "min_time_s" in one_line_error(lambda: LatencyConfig(min_time_s=-1))
    assert "warmup" in one_line_error(lambda: measure_latency(CountingRunner(), IMAGE_SHAPE, warmup=3))
    assert "image shape" in one_line_error(lambda: measure_latency(CountingRunner(), (8, 8), **QUICK))


# ----------------------------------------------------------------------------------------------- parity
def test_parity_passes_on_identical_outputs(reference):
    for precision in ("fp32", "fp16", "int8"):
        result = check_parity(reference, reference.copy(), precision)
        assert result.passed and result.failure is None
        assert (result.max_abs, result.mean_abs, result.top1_agreement) == (0.0, 0.0, 1.0)
        assert result.images == len(reference) and result.tolerance == DEFAULT_TOLERANCES[precision]


def test_parity_failure_names_the_metric_its_limit_and_the_excess(reference):
    perturbed = reference + 1e-2
    result = check_parity(reference, perturbed, "fp32")
    assert not result.passed
    assert result.max_abs == pytest.approx(1e-2, rel=1e-3)
    assert result.failure.startswith("max_abs 1.000e-02 exceeds the fp32 max_abs 1.000e-03 by 9.000e-03")
    # The same error is fine for fp16 (5e-2) and not judged at all for int8.
    assert check_parity(reference, perturbed, "fp16").passed
    assert check_parity(reference, perturbed, "int8").passed


def test_parity_int8_is_judged_by_top1_agreement(reference):
    # Rescaled and shifted logits keep every top-1 class: far off in absolute terms, and still a pass.
    rescaled = reference * 1.5 + 2.0
    result = check_parity(reference, rescaled, "int8")
    assert result.passed and result.max_abs > 1 and result.top1_agreement == 1.0
    flipped = reference.copy()
    count = len(reference) // 10 + 1  # one image in ten (and one more) gets another top-1 class
    rows = np.arange(count)
    flipped[rows, (reference[rows].argmax(1) + 1) % CLASSES] = reference.max() + 1
    result = check_parity(reference, flipped, "int8")
    assert not result.passed
    assert result.top1_agreement == pytest.approx(1 - count / len(reference))
    assert result.failure.startswith("top1_agreement") and "below the int8 min_top1 0.9500" in result.failure
    assert f"{count} of {len(reference)} images disagree" in result.failure


def test_parity_tolerances_can_be_overridden(reference):
    perturbed = reference + 2e-3
    assert not check_parity(reference, perturbed, "fp32").passed
    assert check_parity(reference, perturbed, "fp32", ParityTolerance(max_abs=5e-3)).passed
    # Relative to the logit scale: max_abs + max_rel * max|reference|.
    scale = float(np.abs(reference).max())
    relative = ParityTolerance(max_abs=1e-3, max_rel=2e-3 / scale)
    assert check_parity(reference, perturbed, "fp32", relative).passed
    strict = ParityTolerance(max_mean_abs=1e-3)
    assert "mean_abs" in check_parity(reference, perturbed, "fp32", strict).failure
    assert "min_top1" in one_line_error(lambda: ParityTolerance(min_top1=1.5))


def test_parity_errors_and_non_finite_outputs(reference):
    broken = reference.copy()
    broken[0, 0] = np.nan
    result = check_parity(reference, broken, "fp16")
    assert not result.passed and "1 non-finite" in result.failure
    with pytest.raises(ParityError) as caught:
        result.raise_if_failed("openvino fp16")
    assert caught.value.exit_code == 1 and "openvino fp16" in str(caught.value)
    with pytest.raises(ParityError):
        check_parity(reference, reference[:, :5], "fp32")
    assert "precision" in one_line_error(lambda: check_parity(reference, reference, "fp64"))


# --------------------------------------------------------------------------------------------- accuracy
def test_accuracy_of_a_runner_in_batches():
    labels = np.arange(20) % CLASSES
    images = np.zeros((20, *IMAGE_SHAPE), np.float32)
    images[:, 0, 0, 0] = labels
    images[:5, 0, 0, 0] = (labels[:5] + 1) % CLASSES  # five wrong predictions
    result = evaluate_accuracy(LabelRunner(), images, labels, batch_size=7)
    assert (result.accuracy, result.correct, result.total) == (75.0, 15, 20)
    assert result.logits.shape == (20, CLASSES)
    assert result.to_dict() == {"accuracy": 75.0, "correct": 15, "total": 20}


def test_accuracy_is_the_same_through_pytorch_and_onnxruntime(model, files, digits, reference):
    images, labels = digits
    torch_result = evaluate_accuracy(TorchRunner(model), images, labels, batch_size=32)
    onnx_result = evaluate_accuracy(runner_for(files["onnx"]), images, labels, batch_size=50)
    assert torch_result.accuracy == pytest.approx(top1_accuracy(reference, labels))
    assert onnx_result.accuracy == torch_result.accuracy
    assert "labels" in one_line_error(lambda: evaluate_accuracy(LabelRunner(), images, labels[:-1]))
    assert "labels" in one_line_error(lambda: top1_accuracy(reference, labels + 10))


# ------------------------------------------------------------------------------------------ environment
def test_environment_record_describes_this_machine():
    record = environment_record(threads=2)
    data = json.loads(json.dumps(record.to_dict()))
    assert data["cpu"] and data["logical_cores"] >= 1 and data["threads"] == 2
    assert data["packages"]["torch"] and data["packages"]["openvino"] and data["packages"]["onnxruntime"]
    if importlib.util.find_spec("tensorrt") is None:
        assert data["packages"]["tensorrt"] is None
    assert data["cuda_device"] is None or isinstance(data["cuda_device"], str)


def test_physical_cores_counts_hyperthreads_once(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    blocks = [f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\n" for cpu in range(4)]
    cpuinfo.write_text("\n".join(blocks))
    assert physical_cores(cpuinfo) == 2
    cpuinfo.write_text("processor\t: 0\n\nprocessor\t: 1\n")  # a VM that lists no core ids
    assert physical_cores(cpuinfo) == 2
