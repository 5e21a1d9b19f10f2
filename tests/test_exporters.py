"""Exporters: real ONNX, ONNX Runtime, OpenVINO and NNCF runs on a tiny ResNet trained on the digits images.

The model is trained once per module (~1 s) so that INT8 results can be judged by top-1 agreement with the
PyTorch model: an untrained net's logits are too flat for argmax agreement to mean anything.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import openvino as ov
import pytest
import torch
from edge_runtime_helpers import IO, TRAIN, digits_arrays, trained_student
from torch import nn

from edgekd.bench import check_parity
from edgekd.errors import EdgekdError
from edgekd.exporters import (
    PRECISIONS,
    Artifact,
    ExportOptions,
    ModelIO,
    export_formats,
    get_exporter,
    onnx_for_tensorrt,
    read_metadata,
    trtexec_command,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return digits_arrays()


@pytest.fixture(scope="module")
def trained(digits) -> nn.Module:
    """resnet8 (width 8) after 60 Adam steps: ~90% held-out accuracy. Left in training mode on purpose."""
    return trained_student(*digits).train()


@pytest.fixture(scope="module")
def reference(trained, digits) -> np.ndarray:
    """PyTorch logits on the held-out images (eval mode, on a copy: the fixture model keeps its mode)."""
    model = copy.deepcopy(trained).eval()
    with torch.no_grad():
        return model(torch.from_numpy(digits[0][TRAIN:])).numpy()


@pytest.fixture(scope="module")
def onnx_fp32(trained, tmp_path_factory) -> Artifact:
    return get_exporter("onnx").export(trained, IO, "fp32", tmp_path_factory.mktemp("onnx"))


@pytest.fixture
def calibration(digits) -> np.ndarray:
    return digits[0][:200]


def ort_run(path: Path, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([IO.output_name], {IO.input_name: images})[0]


def ov_run(path: Path, images: np.ndarray) -> np.ndarray:
    # This CPU would run in bf16 by default; parity with PyTorch needs f32 inference asked for explicitly.
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(images)[0]


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    return float((logits.argmax(1) == reference.argmax(1)).mean())


def listing(folder: Path) -> list[str]:
    """Every entry in folder (temporary and hidden ones too), so that leftovers are seen."""
    return sorted(path.name for path in Path(folder).iterdir())


class TwoHeads(nn.Module):
    """Returns two tensors: edgekd exports classifiers with exactly one logits output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(x.flatten(1))
        return logits, logits.softmax(1)


class PinnedBatch(nn.Module):
    """Hard-codes the example batch size in forward: no exporter can make its batch dimension dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 64))


class DataDependentBranch(nn.Module):
    """Branches on a tensor value: torch.export refuses it, the TorchScript tracer records the branch taken."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x)


# ------------------------------------------------------------------------------------ package and checks
def test_importing_the_package_loads_no_backend():
    heavy = ["onnx", "onnxruntime", "openvino", "nncf", "tensorrt"]
    code = f"import sys, edgekd.exporters; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_registry_lists_every_format_and_rejects_unknown_ones():
    assert export_formats() == ("onnx", "openvino", "tensorrt", "litert", "executorch")
    assert PRECISIONS == ("fp32", "fp16", "int8")
    with pytest.raises(
        EdgekdError, match=r"format: 'tflite' is not an export format; allowed: onnx, openvino"
    ):
        get_exporter("tflite")


@pytest.mark.parametrize(
    ("format_name", "precision", "allowed"),
    [
        ("onnx", "bf16", "fp32, fp16, int8"),
        ("openvino", "int4", "fp32, fp16, int8"),
        ("tensorrt", "bf16", "fp32"),
        ("litert", "fp16", "fp32, int8"),
        ("executorch", "fp16", "fp32, int8"),
    ],
)
def test_unknown_precision_is_rejected_before_any_work(tmp_path, format_name, precision, allowed):
    with pytest.raises(EdgekdError) as error:
        get_exporter(format_name).export(nn.Linear(1, 1), IO, precision, tmp_path / "out")
    message = str(error.value)
    assert f"precision: {precision!r} is not supported by the {format_name} exporter" in message
    assert allowed in message and "\n" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"opset": 12}, "opset"),
        ({"opt_batch": 8, "max_batch": 4}, "opt_batch"),
        ({"calibration_method": "kl"}, "calibration_method"),
        ({"int8_max_drop": 1.5}, "int8_max_drop"),
    ],
)
def test_bad_export_options_name_the_field(options, field):
    with pytest.raises(EdgekdError, match=f"export option {field}: "):
        ExportOptions(**options)


def test_bad_stem_is_rejected(tmp_path):
    with pytest.raises(EdgekdError, match=r"artifact stem: '\.\./x' is not allowed"):
        get_exporter("onnx").export(nn.Linear(1, 1), IO, "fp32", tmp_path, stem="../x")


# ---------------------------------------------------------------------------------------------- onnx fp32
def test_onnx_fp32_has_a_dynamic_batch_and_matches_torch(onnx_fp32, reference, digits):
    assert onnx_fp32.path.name == "student_onnx_fp32.onnx"
    assert onnx_fp32.details["exporter"] == "dynamo" and onnx_fp32.details["warnings"] == []
    assert onnx_fp32.details["opset"] == ExportOptions().opset
    assert onnx_fp32.size_bytes == onnx_fp32.path.stat().st_size
    held_out = digits[0][TRAIN:]
    for batch in (1, 5):
        logits = ort_run(onnx_fp32.path, held_out[:batch])
        assert logits.shape == (batch, 10)
        np.testing.assert_allclose(logits, reference[:batch], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_run(onnx_fp32.path, held_out), reference, atol=1e-4, rtol=0)
    graph_input = onnx.load(str(onnx_fp32.path)).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # symbolic, not a fixed size
    assert listing(onnx_fp32.path.parent) == ["student_onnx_fp32.onnx"]  # no temporary file left


def test_onnx_export_leaves_the_callers_model_in_its_mode(trained, onnx_fp32):
    assert onnx_fp32.path.is_file()
    assert trained.training and all(module.training for module in trained.modules())


def test_onnx_metadata_round_trips(onnx_fp32):
    metadata = read_metadata(onnx_fp32.path)
    assert ModelIO.from_metadata(metadata) == IO
    assert metadata["precision"] == "fp32" and metadata["layout"] == "NCHW"
    assert metadata["class_names"].startswith('["digit 0"')


def test_dynamo_failure_falls_back_to_torchscript_with_a_warning(tmp_path):
    model = DataDependentBranch()
    with pytest.warns(UserWarning, match="torch.export-based exporter failed.*data-dependent"):
        artifact = get_exporter("onnx").export(model, IO, "fp32", tmp_path)
    assert artifact.details["exporter"] == "torchscript"
    assert "data-dependent" in artifact.details["fallback_reason"]
    assert len(artifact.details["warnings"]) == 1 and "TorchScript" in artifact.details["warnings"][0]
    images = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)  # positive sum: branch taken
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(ort_run(artifact.path, images), expected, atol=1e-5, rtol=0)


def test_an_opset_below_the_dynamo_exporters_is_honoured_through_torchscript(trained, tmp_path):
    with pytest.warns(UserWarning, match="not the requested opset 17"):
        artifact = get_exporter("onnx").export(trained, IO, "fp32", tmp_path, options=ExportOptions(opset=17))
    assert artifact.details["exporter"] == "torchscript" and artifact.details["opset"] == 17
    assert onnx.load(str(artifact.path)).opset_import[0].version == 17


# ---------------------------------------------------------------------------------------------- onnx fp16
def float_types(proto: onnx.ModelProto) -> dict[str, set[int]]:
    """The element types of the graph's input, output and float initializers."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    return {
        "io": {value.type.tensor_type.elem_type for value in [*proto.graph.input, *proto.graph.output]},
        "weights": {tensor.data_type for tensor in proto.graph.initializer if tensor.data_type in floats},
    }


def weight_bytes(proto: onnx.ModelProto) -> int:
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    return sum(len(tensor.raw_data) for tensor in proto.graph.initializer if tensor.data_type in floats)


def test_onnx_fp16_holds_float16_weights_behind_float32_io(onnx_fp32, digits, reference, tmp_path):
    fp16 = get_exporter("onnx").export(None, IO, "fp16", tmp_path, onnx_fp32=onnx_fp32)
    assert fp16.path.name == "student_onnx_fp16.onnx" and fp16.precision == "fp16"
    assert fp16.details["source"] == str(onnx_fp32.path) and fp16.details["float16"]["keep_io_types"] is True
    proto = onnx.load(str(fp16.path))
    assert float_types(proto) == {"io": {onnx.TensorProto.FLOAT}, "weights": {onnx.TensorProto.FLOAT16}}
    fp32_bytes = weight_bytes(onnx.load(str(onnx_fp32.path)))
    assert fp32_bytes > 0 and weight_bytes(proto) == fp32_bytes // 2  # 2 bytes per weight, not 4
    assert read_metadata(fp16.path)["precision"] == "fp16"
    # Real ONNX Runtime on its CPU provider: float32 in, float32 out, within FP16's tolerance of PyTorch,
    # and not the FP32 model's numbers (the weights really were rounded).
    logits = ort_run(fp16.path, digits[0][TRAIN:])
    assert logits.dtype == np.float32
    result = check_parity(reference, logits, "fp16")
    assert result.passed, result.failure
    assert (
        result.max_abs > check_parity(reference, ort_run(onnx_fp32.path, digits[0][TRAIN:]), "fp32").max_abs
    )


def test_onnx_fp16_without_an_fp32_artifact_exports_the_torch_model(trained, digits, reference, tmp_path):
    fp16 = get_exporter("onnx").export(trained, IO, "fp16", tmp_path)
    assert fp16.details["source"] == "exported from the torch model"
    assert listing(tmp_path) == ["student_onnx_fp16.onnx"]  # the FP32 intermediate is not left behind
    assert check_parity(reference, ort_run(fp16.path, digits[0][TRAIN:]), "fp16").passed


def test_sort_nodes_puts_a_node_after_the_ones_it_reads():
    from onnx import helper

    from edgekd.exporters.onnx_export import sort_nodes

    nodes = [
        helper.make_node("Relu", ["cast"], ["y"], name="relu"),
        helper.make_node("Cast", ["x"], ["cast"], name="cast", to=onnx.TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])], []
    )
    sort_nodes(graph)
    assert [node.name for node in graph.node] == ["cast", "relu"]
    cycle = [
        helper.make_node("Relu", ["b"], ["a"], name="one"),
        helper.make_node("Relu", ["a"], ["b"], name="two"),
    ]
    looped = helper.make_graph(cycle, "g", [], [])
    with pytest.raises(EdgekdError, match="cycle through one, two"):
        sort_nodes(looped)


# ---------------------------------------------------------------------------------------------- onnx int8
def qdq_ops(path: Path) -> dict[str, int]:
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    return {op: ops.count(op) for op in ("QuantizeLinear", "DequantizeLinear")}


def test_onnx_int8_is_qdq_and_agrees_with_torch(trained, onnx_fp32, calibration, digits, reference, tmp_path):
    artifact = get_exporter("onnx").export(
        trained, IO, "int8", tmp_path, calibration=calibration, onnx_fp32=onnx_fp32
    )
    assert artifact.path.name == "student_onnx_int8.onnx"
    assert all(count > 0 for count in qdq_ops(artifact.path).values())
    quantization = artifact.details["quantization"]
    assert quantization["format"] == "QDQ" and quantization["calibration_images"] == 200
    assert quantization["weights"] == "int8 symmetric per-channel"
    assert read_metadata(artifact.path)["precision"] == "int8"
    held_out = digits[0][TRAIN:]
    assert ort_run(artifact.path, held_out[:1]).shape == (1, 10)
    assert agreement(ort_run(artifact.path, held_out), reference) >= 0.95
    assert artifact.size_bytes < onnx_fp32.size_bytes
    assert listing(tmp_path) == ["student_onnx_int8.onnx"]


def test_calibration_size_caps_the_images_read(trained, onnx_fp32, calibration, tmp_path):
    options = ExportOptions(calibration_size=16)
    artifact = get_exporter("onnx").export(
        trained, IO, "int8", tmp_path, calibration=calibration, onnx_fp32=onnx_fp32, options=options
    )
    assert artifact.details["quantization"]["calibration_images"] == 16


def test_tensorrt_flavoured_qdq_onnx_has_symmetric_int8_and_float_biases(
    trained, onnx_fp32, calibration, digits, reference, tmp_path
):
    artifact = onnx_for_tensorrt(trained, IO, "int8", tmp_path, calibration=calibration, onnx_fp32=onnx_fp32)
    assert artifact.path.name == "student_tensorrt_int8.onnx"
    model = onnx.load(str(artifact.path))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":  # TensorRT takes int8 with a zero point of 0 only
            zero_point = onnx.numpy_helper.to_array(initializers[node.input[2]])
            assert zero_point.dtype == np.int8 and not zero_point.any()
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:  # no int32 (bias) inputs
            assert initializers[node.input[0]].data_type == onnx.TensorProto.INT8
    assert agreement(ort_run(artifact.path, digits[0][TRAIN:]), reference) >= 0.95


def test_int8_needs_calibration_images_of_the_input_shape(trained, tmp_path):
    with pytest.raises(EdgekdError, match="calibration: none given; onnx int8 needs calibration images"):
        get_exporter("onnx").export(trained, IO, "int8", tmp_path)
    with pytest.raises(EdgekdError, match=r"calibration: shape \(4, 3, 8, 8\) is not allowed.*N×1×8×8"):
        get_exporter("openvino").export(
            trained, IO, "int8", tmp_path, calibration=np.zeros((4, 3, 8, 8), np.float32)
        )
    assert listing(tmp_path) == []


def test_a_corrupt_onnx_fp32_file_is_rejected_by_name(trained, onnx_fp32, calibration, tmp_path):
    corrupt = tmp_path / "student_onnx_fp32.onnx"
    corrupt.write_bytes(onnx_fp32.path.read_bytes()[:500])  # a truncated copy
    given = Artifact(corrupt, "onnx", "fp32", IO, corrupt.stat().st_size)
    out = tmp_path / "out"
    for format_name, precision in (("onnx", "int8"), ("openvino", "fp32")):
        with pytest.raises(EdgekdError) as error:
            get_exporter(format_name).export(
                trained, IO, precision, out, calibration=calibration, onnx_fp32=given
            )
        message = str(error.value)
        assert message.startswith(f"onnx_fp32: '{corrupt}' is not a valid ONNX model") and "\n" not in message
    assert not out.exists()


def test_an_onnx_fp32_artifact_of_another_kind_is_rejected(trained, onnx_fp32, tmp_path):
    wrong = Artifact(onnx_fp32.path, "onnx", "int8", IO, 1)
    with pytest.raises(EdgekdError, match="onnx_fp32: onnx int8 is not allowed"):
        get_exporter("openvino").export(trained, IO, "fp32", tmp_path, onnx_fp32=wrong)


# -------------------------------------------------------------------------------------- failed exports
def test_a_model_with_two_outputs_leaves_no_file(tmp_path):
    for format_name in ("onnx", "openvino"):
        with pytest.raises(EdgekdError, match=r"one image input .*one logits output"):
            get_exporter(format_name).export(TwoHeads(), IO, "fp32", tmp_path)
    assert listing(tmp_path) == []


def test_a_model_with_a_fixed_batch_size_leaves_no_file(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning: expected, and beside the point here
        with pytest.raises(EdgekdError, match=r"fails at batch 1.*x\.view"):
            get_exporter("onnx").export(PinnedBatch(), IO, "fp32", tmp_path)
    assert listing(tmp_path) == []


# ----------------------------------------------------------------------------------------------- openvino
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_openvino_ir_matches_torch(trained, onnx_fp32, calibration, digits, reference, tmp_path, precision):
    artifact = get_exporter("openvino").export(
        trained, IO, precision, tmp_path, calibration=calibration, onnx_fp32=onnx_fp32
    )
    xml, binary = artifact.files
    assert xml.name == f"student_openvino_{precision}.xml" and binary.suffix == ".bin"
    assert listing(tmp_path) == sorted([xml.name, binary.name])  # the pair, and no staging folder
    assert artifact.size_bytes == xml.stat().st_size + binary.stat().st_size
    assert artifact.details["dynamic_batch"] is True
    held_out = digits[0][TRAIN:]
    assert ov_run(xml, held_out[:1]).shape == (1, 10)
    logits = ov_run(xml, held_out)
    if precision == "fp32":
        np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=0)
    elif precision == "fp16":  # weights rounded to half precision: close, not equal, and half the bytes
        assert np.abs(logits - reference).max() <= 0.05 * np.abs(reference).max()
        assert agreement(logits, reference) >= 0.99
        assert binary.stat().st_size < 0.6 * onnx_fp32.size_bytes
    else:
        assert agreement(logits, reference) >= 0.95
    metadata = read_metadata(xml)
    assert ModelIO.from_metadata(metadata) == IO and metadata["precision"] == precision


def test_openvino_converts_the_torch_model_directly(trained, digits, reference, tmp_path):
    artifact = get_exporter("openvino").export(trained, IO, "fp32", tmp_path)
    assert artifact.details["source"] == "torch module (traced)"
    np.testing.assert_allclose(ov_run(artifact.path, digits[0][TRAIN:]), reference, atol=1e-4, rtol=0)
    assert trained.training  # the caller's mode is restored


def test_openvino_int8_with_accuracy_control(trained, onnx_fp32, calibration, digits, reference, tmp_path):
    images, labels = digits
    validation = (images[TRAIN : TRAIN + 300], labels[TRAIN : TRAIN + 300])
    options = ExportOptions(int8_max_drop=0.02)
    artifact = get_exporter("openvino").export(
        trained,
        IO,
        "int8",
        tmp_path,
        options=options,
        calibration=calibration,
        validation=validation,
        onnx_fp32=onnx_fp32,
    )
    quantization = artifact.details["quantization"]
    assert quantization["accuracy_control"] == "nncf.quantize_with_accuracy_control"
    assert quantization["max_drop"] == 0.02 and quantization["validation_images"] == 300
    assert agreement(ov_run(artifact.path, images[TRAIN:]), reference) >= 0.95


def test_accuracy_control_without_validation_data_is_an_error(trained, onnx_fp32, calibration, tmp_path):
    with pytest.raises(EdgekdError, match=r"int8_max_drop: 0\.02 needs validation images and labels"):
        get_exporter("openvino").export(
            trained,
            IO,
            "int8",
            tmp_path,
            options=ExportOptions(int8_max_drop=0.02),
            calibration=calibration,
            onnx_fp32=onnx_fp32,
        )
    assert listing(tmp_path) == []


# ----------------------------------------------------------------------------------------------- tensorrt
def test_trtexec_command_builds_the_same_engine(tmp_path):
    options = ExportOptions(max_batch=32, opt_batch=8)
    fp32 = trtexec_command("a.onnx", "a.engine", "fp32", IO, options)
    assert fp32 == (
        "trtexec --onnx=a.onnx --saveEngine=a.engine --minShapes=images:1x1x8x8 "
        "--optShapes=images:8x1x8x8 --maxShapes=images:32x1x8x8"
    )
    assert trtexec_command("a.onnx", "a.engine", "fp16", IO, options) == fp32 + " --fp16"
    assert trtexec_command("q.onnx", "q.engine", "int8", IO, options).endswith(" --int8")
    assert "--minShapes=images:1x1x8x8" in trtexec_command("a.onnx", "a.engine", "fp32", IO)  # defaults
    spaced = trtexec_command(tmp_path / "my dir" / "a.onnx", "a.engine", "fp32", IO)
    assert f"'--onnx={tmp_path / 'my dir' / 'a.onnx'}'" in spaced  # quoted for a shell
    with pytest.raises(EdgekdError, match="precision: 'int4' is not supported by the tensorrt exporter"):
        trtexec_command("a.onnx", "a.engine", "int4", IO)


def test_trtexec_input_name_comes_from_the_model_io():
    io = ModelIO(3, 32, 32, (0.5,) * 3, (0.2,) * 3, ("cat", "dog"), input_name="pixels")
    assert "--maxShapes=pixels:64x3x32x32" in trtexec_command("a.onnx", "a.engine", "fp32", io)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tensorrt_missing_is_a_clear_error(trained, onnx_fp32, calibration, tmp_path, precision):
    with pytest.raises(EdgekdError) as error:
        get_exporter("tensorrt").export(
            trained, IO, precision, tmp_path, calibration=calibration, onnx_fp32=onnx_fp32
        )
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("tensorrt: TensorRT is not installed here")
    assert "engines must be built on the target GPU" in message
    engine = tmp_path / f"student_tensorrt_{precision}.engine"
    onnx_path = onnx_fp32.path if precision == "fp32" else tmp_path / "student_tensorrt_int8.onnx"
    assert message.endswith(trtexec_command(onnx_path, engine, precision, IO))
    assert listing(tmp_path) == []


def test_onnx_for_tensorrt_fp32_reuses_the_given_onnx(trained, onnx_fp32, tmp_path):
    assert onnx_for_tensorrt(trained, IO, "fp16", tmp_path, onnx_fp32=onnx_fp32) is onnx_fp32
    assert listing(tmp_path) == []


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(
    not (HAS_TENSORRT and torch.cuda.is_available()), reason="TensorRT and a CUDA GPU are required"
)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_builds_a_real_engine(
    trained, onnx_fp32, calibration, digits, reference, tmp_path, precision
):
    import tensorrt as trt

    from edgekd.bench.runners.tensorrt_runner import TensorRTRunner

    options = ExportOptions(max_batch=16, opt_batch=4)
    artifact = get_exporter("tensorrt").export(
        trained, IO, precision, tmp_path, options=options, calibration=calibration, onnx_fp32=onnx_fp32
    )
    assert artifact.path.name == f"student_tensorrt_{precision}.engine"
    assert listing(tmp_path) == [artifact.path.name]
    assert artifact.details["profile"] == {"min": 1, "opt": 4, "max": 16}
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(artifact.path.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2
    runner = TensorRTRunner(artifact.path)
    runner.load()
    held_out = digits[0][TRAIN : TRAIN + 16]
    logits = runner.run(held_out)
    assert logits.shape == (16, 10)
    if precision == "fp32":  # TF32 may be used for FP32 layers: close, not bit-equal
        np.testing.assert_allclose(logits, reference[:16], atol=1e-2, rtol=0)
    assert agreement(logits, reference[:16]) >= 0.9
