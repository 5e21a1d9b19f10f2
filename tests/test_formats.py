"""The formats table and the latency settings are declared once; everything that names them reads them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from torch import nn

from edgekd.bench import DEFAULT_TOLERANCES, TorchRunner, measure_latency
from edgekd.bench.runners import BACKEND_FOR_SUFFIX
from edgekd.config.deploy import BenchmarkConfig, ExportConfig, ParityConfig
from edgekd.errors import EdgekdError
from edgekd.exporters import export_formats, get_exporter
from edgekd.formats import BACKENDS, FORMAT_PRECISIONS, FORMATS, PARITY_DEFAULTS, PRECISIONS
from edgekd.latency_settings import LatencyConfig, LatencySettings

QUICK = {"warmup_iters": 1, "warmup_s": 0.0, "min_iters": 2, "min_time_s": 0.0}


def test_the_declarations_import_without_torch_or_a_backend():
    heavy = ["torch", "numpy", "onnx", "onnxruntime", "openvino"]
    code = (
        "import sys, edgekd.formats, edgekd.latency_settings; "
        f"print([name for name in {heavy!r} if name in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------ formats
def test_every_format_writes_precisions_in_the_one_order():
    assert PRECISIONS == ("fp32", "fp16", "int8")
    for fmt in FORMATS.values():
        assert fmt.precisions == tuple(p for p in PRECISIONS if p in fmt.precisions), fmt.name
        assert fmt.suffixes and fmt.backend in BACKENDS and fmt.description
    assert FORMAT_PRECISIONS["onnx"] == ("fp32", "fp16", "int8")


def test_exporters_and_runners_read_the_table():
    assert export_formats() == tuple(FORMATS)
    for name, fmt in FORMATS.items():
        exporter = get_exporter(name)
        assert (exporter.precisions, exporter.suffix) == (fmt.precisions, fmt.suffixes[0])
        for suffix in fmt.suffixes:
            assert BACKEND_FOR_SUFFIX[suffix] == fmt.backend


def test_recipe_targets_follow_the_table():
    for name, precisions in FORMAT_PRECISIONS.items():
        assert ExportConfig(targets={name: list(precisions)}).targets == {name: list(precisions)}
    with pytest.raises(ValueError, match=r"targets\.onnx: \['fp16', 'fp16'\] names a precision twice"):
        ExportConfig(targets={"onnx": ["fp16", "fp16"]})
    with pytest.raises(ValueError, match=r"targets\.onnx\.0"):
        ExportConfig(targets={"onnx": ["bf16"]})


def test_parity_defaults_are_one_set_of_numbers():
    parity = ParityConfig()
    recipe_side = {
        "fp32": (parity.fp32_max_abs, None),
        "fp16": (parity.fp16_max_abs, parity.fp16_min_top1),
        "int8": (None, parity.int8_min_top1),
    }
    for precision, limits in PARITY_DEFAULTS.items():
        assert recipe_side[precision] == (limits.max_abs, limits.min_top1)
        tolerance = DEFAULT_TOLERANCES[precision]
        assert (tolerance.max_abs, tolerance.min_top1) == (limits.max_abs, limits.min_top1)


def test_export_help_names_what_each_format_writes(cli):
    result = cli("export", "--help")
    text = " ".join(result.output.split())  # unwrapped
    # LiteRT and ExecuTorch write no fp16: the help says which formats write only some precisions.
    partial = "(litert: fp32, int8; executorch: fp32, int8)"
    assert result.exit_code == 0 and f"Each format writes those it supports {partial}." in text


# ---------------------------------------------------------------------------------------- latency settings
def test_the_recipe_section_is_the_latency_settings_plus_its_own():
    timing = set(LatencySettings.model_fields)
    assert set(BenchmarkConfig.model_fields) == timing | {"enabled", "onnxruntime_device"}
    assert BenchmarkConfig().to_dict() == LatencyConfig().to_dict() == LatencySettings().to_dict()


def test_the_harness_takes_a_benchmark_section_as_it_is():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    bench = BenchmarkConfig(batches=[1, 2], threads=1, enabled=True, **QUICK)
    result = measure_latency(TorchRunner(model), (1, 8, 8), bench)
    assert [timing.batch for timing in result.batches] == [1, 2]
    # What metrics.json records: the timing settings and the image seed, never the section's own fields.
    assert result.to_dict()["config"] == {"batches": [1, 2], "threads": 1, **QUICK, "seed": 0}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_iters": 0}, "min_iters: got 0: input should be greater than or equal to 1"),
        ({"batches": (4, 0)}, "batches.1: got 0: input should be greater than or equal to 1"),
        ({"warmup_s": float("nan")}, "warmup_s: got nan: input should be a finite number"),
        ({"threads": True}, "threads: got True: input should be a valid integer"),
        ({"warmup": 3}, "warmup: unknown latency setting; allowed: batches, threads, warmup_iters"),
    ],
)
def test_a_bad_setting_in_python_is_one_line(values, message):
    with pytest.raises(EdgekdError) as caught:
        LatencyConfig(**values)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_bench_options_come_from_the_settings(cli, tmp_path):
    result = cli("bench", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # unwrapped
    for name, field in LatencySettings.model_fields.items():
        flag = "--batch" if name == "batches" else "--" + name.replace("_", "-")
        assert flag in text and field.description in text, flag
    assert "[default: 50; 1<=x<=10000000]" in text
    result = cli("bench", tmp_path / "m.onnx", "--min-iters", "0")
    assert result.exit_code == 2 and "--min-iters" in result.output and result.output.count("\n") == 1
