"""Batch-1 latency of three models on every CPU backend, side by side in one run, against the issue's targets.

Models: (a) the quickstart student (from a run folder's models/, or an untrained resnet8 width 8 on 8×8
digits), (b) torchvision ResNet-18 and (c) MobileNetV2 (random weights, 224×224, 1000 classes). Backends:
eager PyTorch, ONNX Runtime FP32/INT8 and OpenVINO FP32/FP16/INT8, all through edgekd's runners and latency
harness at one fixed thread count. Every backend is measured in several interleaved rounds (so that a burst
of load on a shared machine hits all of them alike) and its p50 is the median of the rounds' p50s.

The harness times the bound inference call (:meth:`edgekd.bench.Runner.bind_inference`: the input bound once,
no input conversion). On every model it is checked against OpenVINO's own ``benchmark_app`` on the
same FP32 IR (median latency, sync API, latency hint, same threads and f32 precision), measured right
before and after benchmark_app; ONNX Runtime's harness p50 is set beside ``onnxruntime_perf_test`` on the
FP32 .onnx the same way where that binary exists (the onnxruntime wheel does not ship it).

The phone/ARM runtimes join when their extras are installed (``--edge-runtimes auto``: ``.[litert]`` and
``.[executorch]``): LiteRT and ExecuTorch FP32/INT8 in the same interleaved rounds, each beside the benchmark
tool its own package ships where there is one — ai-edge-litert's ``litert-benchmark`` (a Python port of the
C++ ``benchmark_litert_model``, on LiteRT's CompiledModel API), run on the same FP32 .tflite and bracketed by
our harness; the executorch wheel ships none (``executor_runner`` is built from ExecuTorch's sources), which
the results file says. The install size each extra adds is recorded beside its rows.

Writes benchmarks/results/export_speed.json with the machine, every p50 and the ratios the issue asks for:

    python benchmarks/export_speed.py [--run-dir runs/quickstart] [--threads 2] [--rounds 3] \
        [--edge-runtimes auto|none|litert,executorch]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from edgekd.bench import (
    LatencyConfig,
    LatencyResult,
    OpenVinoRunner,
    Runner,
    TorchRunner,
    batched_logits,
    check_parity,
    environment_record,
    measure_latency,
    runner_for,
)
from edgekd.exporters import Artifact, ExportOptions, ModelIO, get_exporter
from edgekd.formats import FORMATS
from edgekd.layout import RunLayout
from edgekd.records import RunMetrics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "export_speed.json"
BACKENDS = (
    "pytorch_eager",
    "onnxruntime_fp32",
    "onnxruntime_int8",
    "openvino_fp32",
    "openvino_fp16",
    "openvino_int8",
)
# The targets, as speed-up factors (higher is better) or as a band around 1 for the harness check.
TARGETS = {
    "openvino_fp32_vs_eager": 3.0,
    "onnxruntime_fp32_vs_eager": 2.0,
    "int8_vs_fp32": 1.5,
    "harness_band": 0.10,
}
IMAGENET_IO = ModelIO(3, 224, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), tuple(map(str, range(1000))))
# benchmark_app prints "Median: 10.29 ms", or microseconds for fast models ("Median: 21.01 us").
_MEDIAN_LINE = re.compile(r"Median:\s+([0-9.]+)\s*(ms|us)")
_MS_PER_UNIT = {"ms": 1.0, "us": 1e-3}
# onnxruntime_perf_test -s prints its percentiles in seconds: "P50 Latency: 0.000123 s" (older builds
# "P50 Latency is 0.000123sec").
_P50_LINE = re.compile(r"P50 Latency(?::| is)\s*([0-9.eE+-]+)\s*s")
PERF_TEST = "onnxruntime_perf_test"
EDGE_RUNTIMES = ("litert", "executorch")
# The benchmark tool each edge runtime's own package installs (None: it ships none).
LITERT_TOOL = "litert-benchmark"
EDGE_TOOL_MISSING = {
    "executorch": "the executorch wheel ships no benchmark tool: its C++ executor_runner (and the "
    "benchmark apps) are built from ExecuTorch's sources with CMake; the harness p50 stands alone",
}
# What each edge extra adds to an environment that has edgekd's train extra (pip's dry runs of the extras
# and the freeze of the environment this was measured in): its pinned packages and what they pull in.
EXTRA_DISTRIBUTIONS = {
    "litert": (
        "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "litert-converter", "jax", "jaxlib",
        "transformers", "torchao", "litert-lm-builder", "kagglehub", "tokenizers", "safetensors",
        "ml_dtypes", "opt_einsum", "flatbuffers", "absl-py",
    ),
    "executorch": (
        "executorch", "torchao", "pandas", "coremltools", "hydra-core", "omegaconf", "pytorch-tokenizers",
        "tiktoken", "ruamel.yaml", "flatbuffers", "expecttest", "parameterized", "tabulate",
        "pyre-extensions", "mpmath",
    ),
}  # fmt: skip
# What a device that only runs LiteRT artifacts needs (no torch).
LITERT_RUNTIME_ONLY = ("ai-edge-litert", "flatbuffers", "ml_dtypes", "tqdm", "protobuf")
PERF_TEST_MISSING = (
    f"{PERF_TEST} was not found (on PATH or next to this Python): the onnxruntime wheel does not ship it, it "
    "is built from ONNX Runtime's sources. ONNX Runtime's harness p50 is recorded without a C++ reference."
)


@dataclass
class Subject:
    """One model to measure, with the images it is timed, calibrated and checked on."""

    name: str
    model: nn.Module
    io: ModelIO
    images: np.ndarray  # timing and parity images
    calibration: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ models
def digits_images(mean: float, std: float, count: int) -> np.ndarray:
    """Real 8×8 digits, scaled to [0, 1] as edgekd loads them, then normalized."""
    images = load_digits().images[:count].astype(np.float32)[:, None] / 16.0
    return np.ascontiguousarray((images - mean) / std, dtype=np.float32)


def student_subject(run_dir: Path | None) -> Subject:
    from edgekd.models import create_model

    if run_dir is None:
        torch.manual_seed(0)
        model = create_model("resnet8", 10, 1, width=8)
        io = ModelIO(1, 8, 8, (0.3053,), (0.3762,), tuple(map(str, range(10))))
        notes = {"source": "create_model('resnet8', 10, 1, width=8), untrained (no run folder given)"}
    else:
        model, io, notes = _trained_student(run_dir)
    images = digits_images(io.mean[0], io.std[0], 300)
    notes["images"] = "real scikit-learn digits (timing, parity and INT8 calibration: 300 images)"
    return Subject("quickstart_student", model.eval(), io, images[:64], images, notes)


def _trained_student(run_dir: Path) -> tuple[nn.Module, ModelIO, dict[str, Any]]:
    from edgekd.models import create_model
    from edgekd.train.checkpoint import load_weights

    layout = RunLayout(run_dir)
    metrics = RunMetrics.load(layout.metrics)
    main, data = metrics.main, metrics.student_data
    spec, classes = data["input_spec"], data["class_names"]
    model = create_model(main.arch, len(classes), spec["channels"], **main.model_args)
    checkpoint = layout.model_weights(main.name)
    load_weights(model, checkpoint, "student checkpoint", main.arch)
    io = ModelIO(spec["channels"], spec["height"], spec["width"], spec["mean"], spec["std"], tuple(classes))
    return model, io, {"source": f"{checkpoint} ({main.arch} {main.model_args}, trained)"}


def torchvision_subject(name: str, calibration_images: int) -> Subject:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=1000)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((calibration_images, *IMAGENET_IO.image_shape), dtype=np.float32)
    calibrate_batchnorm(model, images)
    notes = {
        "source": f"torchvision.models.{name}(weights=None): random weights, 224x224, 1000 classes; "
        "BatchNorm statistics set from the timing images (calibrate_batchnorm)",
        "images": f"random standard-normal images (no ImageNet here): timing, parity and INT8 calibration "
        f"({calibration_images} images)",
    }
    return Subject(name, model.eval(), IMAGENET_IO, images[:16], images, notes)


def calibrate_batchnorm(model: nn.Module, images: np.ndarray, batches: int = 4, batch_size: int = 16) -> None:
    """Give a randomly initialized model BatchNorm statistics of real activations, as training would.

    With its init-time statistics (mean 0, variance 1) a random MobileNetV2's activations shrink ~10× per
    stage and its logits end near 1e-9: every backend then agrees to 1e-15 while FP16 and INT8 top-1 agree
    on nothing, so parity says nothing. Timing does not depend on the values; the parity columns do.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for start in range(0, min(len(images), batches * batch_size), batch_size):
            model(torch.from_numpy(images[start : start + batch_size]))
    model.eval()


# ----------------------------------------------------------------------------------------------- exports
def export_artifacts(subject: Subject, out_dir: Path, edge: tuple[str, ...] = ()) -> dict[str, Artifact]:
    """ONNX FP32 first; ONNX INT8 and the OpenVINO IRs are made from it, as `edgekd build` does; then each
    edge runtime's FP32 and INT8 artifact from the PyTorch model (their exporters start from torch.export)."""
    options = ExportOptions(calibration_size=len(subject.calibration))
    common = {"options": options, "stem": subject.name}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation notices are not what this script reports
        onnx_fp32 = get_exporter("onnx").export(subject.model, subject.io, "fp32", out_dir, **common)
        artifacts = {"onnxruntime_fp32": onnx_fp32}
        for key, (fmt, precision) in {
            "onnxruntime_int8": ("onnx", "int8"),
            "openvino_fp32": ("openvino", "fp32"),
            "openvino_fp16": ("openvino", "fp16"),
            "openvino_int8": ("openvino", "int8"),
        }.items():
            calibration = subject.calibration if precision == "int8" else None
            artifacts[key] = get_exporter(fmt).export(
                subject.model,
                subject.io,
                precision,
                out_dir,
                calibration=calibration,
                onnx_fp32=onnx_fp32,
                **common,
            )
        for runtime in edge:
            for precision in ("fp32", "int8"):
                print(f"  {subject.name}: exporting {runtime} {precision}", flush=True)
                artifacts[f"{runtime}_{precision}"] = get_exporter(runtime).export(
                    subject.model,
                    subject.io,
                    precision,
                    out_dir,
                    calibration=subject.calibration if precision == "int8" else None,
                    **common,
                )
    return artifacts


def make_runners(subject: Subject, artifacts: dict[str, Artifact], threads: int) -> dict[str, Runner]:
    runners: dict[str, Runner] = {"pytorch_eager": TorchRunner(subject.model, threads=threads)}
    for key, artifact in artifacts.items():
        options = {"threads": threads, "precision": artifact.precision}
        runners[key] = runner_for(artifact.path, backend=key.split("_")[0], **options)
    return runners


# ------------------------------------------------------------------------------------------------ timing
def time_backends(
    subject: Subject, runners: dict[str, Runner], config: LatencyConfig, rounds: int
) -> dict[str, dict[str, Any]]:
    """Interleaved rounds over the backends; returns per-backend p50 (median of rounds) and details."""
    results: dict[str, dict[str, Any]] = {key: {"rounds": []} for key in runners}
    for round_index in range(rounds):
        for key, runner in runners.items():
            print(f"  {subject.name}: {key} (round {round_index + 1}/{rounds})", flush=True)
            result = measure_latency(runner, subject.images, config)
            timing = result.at_batch(1)
            entry = results[key]
            entry["rounds"].append(timing.to_dict())
            if result.cold_start is not None:
                entry["cold_start"] = result.cold_start.to_dict()
                entry["runner"] = result.runner
                entry["timed_call"] = result.timed_call
    for entry in results.values():
        entry["p50_ms"] = round(statistics.median(r["p50_ms"] for r in entry["rounds"]), 4)
        # The least disturbed round, for reading results taken on a busy machine.
        entry["p50_ms_best_round"] = min(r["p50_ms"] for r in entry["rounds"])
    return results


def check_outputs(subject: Subject, runners: dict[str, Runner]) -> dict[str, dict[str, Any]]:
    """Parity of each artifact with eager PyTorch on the timing images: fast only counts when it is right."""
    reference = batched_logits(runners["pytorch_eager"], subject.images)
    checks = {}
    for key, runner in runners.items():
        if key == "pytorch_eager":
            continue
        precision = key.rsplit("_", 1)[1]
        result = check_parity(reference, batched_logits(runner, subject.images), precision)
        # logit_scale matters for reading the rest: random-weight MobileNetV2 has ~1e-5 logits, whose
        # top-1 class is noise, so its fp16/int8 agreement says nothing about the backend.
        keys = ("max_abs", "mean_abs", "top1_agreement", "logit_scale", "passed", "failure")
        checks[key] = {k: result.to_dict()[k] for k in keys}
    return checks


# ------------------------------------------------------------------------------- benchmark_app, perf_test
def find_tool(name: str) -> str | None:
    """An installed command-line tool: on PATH, or in the virtual environment of this Python."""
    beside_python = Path(sys.executable).with_name(name)
    return shutil.which(name) or (str(beside_python) if beside_python.is_file() else None)


def benchmark_app_median(xml: Path, io: ModelIO, threads: int, seconds: int) -> dict[str, Any]:
    """OpenVINO's benchmark_app on the same IR at batch 1; its median latency in ms.

    benchmark_app refuses -nthreads together with -hint latency (a rule of its command line, not of
    OpenVINO), so the thread count goes in through -load_config, which sets the same CPU property.
    """
    app = find_tool("benchmark_app") or "benchmark_app"
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-app-") as work:
        config = Path(work) / "config.json"
        config.write_text(json.dumps({"CPU": {"INFERENCE_NUM_THREADS": str(threads)}}))
        command = [
            app,
            "-m", str(xml),
            "-d", "CPU",
            "-hint", "latency",
            "-load_config", str(config),
            "-infer_precision", "f32",
            "-api", "sync",
            "-t", str(seconds),
            "-shape", f"[1,{io.channels},{io.height},{io.width}]",
        ]  # fmt: skip
        output = run_tool(command, "benchmark_app")
    match = _MEDIAN_LINE.search(output)
    if match is None:
        raise RuntimeError(f"benchmark_app printed no median latency: {last_lines(output)}")
    shown = [part if part != str(config) else "<config.json>" for part in command]
    return {
        "median_ms": round(float(match.group(1)) * _MS_PER_UNIT[match.group(2)], 4),
        "command": shown_command(shown),
        "load_config": {"CPU": {"INFERENCE_NUM_THREADS": str(threads)}},
    }


def perf_test_median(onnx: Path, threads: int, seconds: int) -> dict[str, Any]:
    """onnxruntime_perf_test on the same .onnx: random inputs (-I, the free batch dimension taken as 1), the
    CPU provider with the runner's settings (intra-op threads, 1 inter-op thread, sequential, all graph
    optimizations); its P50 latency in ms."""
    command = [
        find_tool(PERF_TEST) or PERF_TEST,
        "-e", "cpu",
        "-m", "duration",
        "-t", str(seconds),
        "-x", str(threads),
        "-y", "1",
        "-o", "99",
        "-I",
        "-s",
        str(onnx),
    ]  # fmt: skip
    output = run_tool(command, PERF_TEST)
    match = _P50_LINE.search(output)
    if match is None:
        raise RuntimeError(f"{PERF_TEST} printed no P50 latency: {last_lines(output)}")
    return {"median_ms": round(float(match.group(1)) * 1000, 4), "command": shown_command(command)}


def litert_benchmark_median(tflite: Path, threads: int, seconds: int, per_run_ms: float) -> dict[str, Any]:
    """ai-edge-litert's own litert-benchmark on the same .tflite (CPU, `threads` threads, random inputs): its
    median in ms, from its --result_json. It runs a count of iterations, not a duration: the count is
    chosen from the harness's p50 so that the run lasts about `seconds`."""
    runs = max(50, min(200_000, round(seconds * 1000 / max(per_run_ms, 1e-3))))
    with tempfile.TemporaryDirectory(prefix="edgekd-litert-benchmark-") as work:
        out = Path(work) / "result.json"
        command = [
            find_tool(LITERT_TOOL) or LITERT_TOOL,
            "--model", str(tflite),
            "--num_threads", str(threads),
            "--num_runs", str(runs),
            "--warmup_runs", "20",
            "--result_json", str(out),
        ]  # fmt: skip
        run_tool(command, LITERT_TOOL)
        latency = json.loads(out.read_text())["latency"]
    shown = [part if part != str(out) else "<result.json>" for part in command]
    return {
        "median_ms": latency["median_ms"],
        "runs": latency["num_runs"],
        "command": shown_command(shown),
        "note": "litert-benchmark rounds its latencies to 0.01 ms",
    }


def harness_vs_litert_benchmark(
    subject: Subject, tflite: Path, threads: int, seconds: int, repeats: int, harness_p50_ms: float
) -> dict[str, Any]:
    """Alternate our harness (a fresh LiteRT FP32 runner) and litert-benchmark on the same .tflite."""
    if find_tool(LITERT_TOOL) is None:
        return {"available": False, "harness_p50_ms": harness_p50_ms, "note": f"{LITERT_TOOL} not found"}
    runner = runner_for(tflite, backend="litert", threads=threads, precision="fp32")
    print(f"  {subject.name}: harness vs {LITERT_TOOL} ({repeats} x {seconds} s)", flush=True)
    ours, tools = bracketed(
        subject,
        runner,
        lambda: litert_benchmark_median(tflite, threads, seconds, harness_p50_ms),
        threads,
        seconds,
        repeats,
    )
    comparison = side_by_side(ours, tools, "litert_benchmark")
    comparison.update(
        available=True,
        command=tools[0]["command"],
        what=f"{LITERT_TOOL} (ai_edge_litert.tools.benchmark_litert_model): a Python port of LiteRT's C++ "
        "benchmark_litert_model on the CompiledModel API, installed with ai-edge-litert; the harness runs "
        "the artifact through ai-edge-litert's Interpreter with the XNNPACK delegate",
        rounding=tools[0]["note"],
        # below 0.1 ms its 0.01 ms rounding is over 10 % of the value: the ratio then says little
        resolution_limited=comparison["litert_benchmark_median_ms"] < 0.1,
    )
    return comparison


def edge_tools(
    subject: Subject,
    artifacts: dict[str, Artifact],
    backends: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Each edge runtime's FP32 p50 beside its package's own benchmark tool, or why there is none."""
    found: dict[str, Any] = {}
    for runtime in args.edge:
        harness_p50 = backends[f"{runtime}_fp32"]["p50_ms"]
        if runtime == "litert":
            found[runtime] = harness_vs_litert_benchmark(
                subject,
                artifacts["litert_fp32"].path,
                args.threads,
                args.app_seconds,
                args.app_repeats,
                harness_p50,
            )
        else:
            found[runtime] = {
                "available": False,
                "harness_p50_ms": harness_p50,
                "note": EDGE_TOOL_MISSING[runtime],
            }
    return found


def run_tool(command: list[str], name: str) -> str:
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {completed.returncode}): {last_lines(output)}")
    return output


def last_lines(output: str) -> str:
    return " | ".join(output.strip().splitlines()[-3:])


def shown_command(command: list[str]) -> str:
    return " ".join([Path(command[0]).name, *command[1:]])


def bracketed(
    subject: Subject,
    runner: Runner,
    tool: Callable[[], dict[str, Any]],
    threads: int,
    seconds: int,
    repeats: int,
) -> tuple[list[LatencyResult], list[dict[str, Any]]]:
    """Our harness around each run of an outside tool at batch 1: ours, tool, ours, tool, ..., ours.

    Each side is then summarized by the median of its runs, so a burst of load from another process skews
    one run and not the comparison.
    """
    config = LatencyConfig(batches=(1,), threads=threads, warmup_s=1.0, min_iters=50, min_time_s=seconds / 2)
    ours = [measure_latency(runner, subject.images, config)]
    theirs = []
    for _ in range(repeats):
        theirs.append(tool())
        ours.append(measure_latency(runner, subject.images, config))
    return ours, theirs


def side_by_side(ours: list[LatencyResult], theirs: list[dict[str, Any]], tool: str) -> dict[str, Any]:
    """The median of our p50s and of the tool's medians, each run, and their ratio."""
    our_p50s = [result.at_batch(1).p50_ms for result in ours]
    their_medians = [run["median_ms"] for run in theirs]
    return {
        "harness_p50_ms": round(statistics.median(our_p50s), 4),
        "harness_p50_ms_runs": [round(value, 4) for value in our_p50s],
        f"{tool}_median_ms": round(statistics.median(their_medians), 4),
        f"{tool}_median_ms_runs": their_medians,
        f"harness_vs_{tool}": round(statistics.median(our_p50s) / statistics.median(their_medians), 3),
        "timed_call": ours[-1].timed_call,
    }


def harness_vs_benchmark_app(
    subject: Subject, xml: Path, threads: int, seconds: int, repeats: int
) -> dict[str, Any]:
    """Alternate our harness (a fresh OpenVINO FP32 runner) and benchmark_app on the same IR at batch 1."""
    runner = OpenVinoRunner(xml, threads=threads, precision="fp32", hint="latency")
    print(f"  {subject.name}: harness vs benchmark_app ({repeats} x {seconds} s)", flush=True)
    ours, apps = bracketed(
        subject,
        runner,
        lambda: benchmark_app_median(xml, subject.io, threads, seconds),
        threads,
        seconds,
        repeats,
    )
    comparison = side_by_side(ours, apps, "benchmark_app")
    comparison["benchmark_app"] = {key: apps[0][key] for key in ("command", "load_config")}
    comparison["python_call_cost"] = python_call_cost(xml, subject.images[:1], threads, seconds / 5)
    return comparison


def python_call_cost(xml: Path, batch: np.ndarray, threads: int, seconds: float) -> dict[str, Any]:
    """What separates the harness from benchmark_app on one model: in a tight loop of the call the harness
    times (InferRequest.infer() on an input set once), its wall time from Python per call against the
    latency the request measures in C++ around the inference, which is the number benchmark_app reports.

    The request is compiled here with OpenVINO's own API and the runner's settings, so that the number is
    about OpenVINO's Python binding and not about edgekd.
    """
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    model.reshape({model.input(0): ov.PartialShape(list(batch.shape))})
    hints = ov.properties.hint
    config = {
        hints.performance_mode(): hints.PerformanceMode.LATENCY,
        hints.inference_precision(): ov.Type.f32,
        ov.properties.inference_num_threads(): threads,
    }
    request = core.compile_model(model, "CPU", config).create_infer_request()
    request.set_input_tensor(ov.Tensor(np.ascontiguousarray(batch), shared_memory=True))
    walls: list[float] = []
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(walls) < 50:
        before = time.perf_counter_ns()
        request.infer()
        walls.append((time.perf_counter_ns() - before) / 1e3)
        latencies.append(request.latency * 1e3)  # reported in ms
    wall_us, latency_us = np.asarray(walls[10:]), np.asarray(latencies[10:])  # past the warm-up
    return {
        "calls": len(wall_us),
        "wall_p50_us": round(float(np.median(wall_us)), 2),
        "request_latency_p50_us": round(float(np.median(latency_us)), 2),
        "wall_minus_latency_p50_us": round(float(np.median(wall_us - latency_us)), 2),
        "wall_vs_latency": round(float(np.median(wall_us) / np.median(latency_us)), 3),
    }


def harness_vs_perf_test(
    subject: Subject, onnx: Path, threads: int, seconds: int, repeats: int, harness_p50_ms: float
) -> dict[str, Any]:
    """Alternate our harness (a fresh ONNX Runtime FP32 runner) and onnxruntime_perf_test where it exists;
    else only the harness p50 of the backend rounds, and why nothing stands beside it."""
    if find_tool(PERF_TEST) is None:
        return {"available": False, "harness_p50_ms": harness_p50_ms, "note": PERF_TEST_MISSING}
    runner = runner_for(onnx, backend="onnxruntime", threads=threads, precision="fp32")
    print(f"  {subject.name}: harness vs {PERF_TEST} ({repeats} x {seconds} s)", flush=True)
    ours, tests = bracketed(
        subject, runner, lambda: perf_test_median(onnx, threads, seconds), threads, seconds, repeats
    )
    return {"available": True, **side_by_side(ours, tests, PERF_TEST), "command": tests[0]["command"]}


# ------------------------------------------------------------------------------------------------ report
def ratios(p50: dict[str, float], app: dict[str, Any], perf_test: dict[str, Any]) -> dict[str, float]:
    """Speed-ups as 'how many times faster' (baseline p50 / candidate p50); the harness checks as ours/theirs
    (ONNX Runtime's only where onnxruntime_perf_test exists)."""

    def faster(baseline: str, candidate: str) -> float:
        return round(p50[baseline] / p50[candidate], 3)

    ratio = {
        "openvino_fp32_vs_eager": faster("pytorch_eager", "openvino_fp32"),
        "onnxruntime_fp32_vs_eager": faster("pytorch_eager", "onnxruntime_fp32"),
        "onnxruntime_int8_vs_fp32": faster("onnxruntime_fp32", "onnxruntime_int8"),
        "openvino_int8_vs_fp32": faster("openvino_fp32", "openvino_int8"),
        "openvino_fp16_vs_fp32": faster("openvino_fp32", "openvino_fp16"),
        "harness_vs_benchmark_app": app["harness_vs_benchmark_app"],
    }
    if perf_test["available"]:
        ratio["harness_vs_onnxruntime_perf_test"] = perf_test["harness_vs_onnxruntime_perf_test"]
    for runtime in EDGE_RUNTIMES:
        if f"{runtime}_fp32" in p50:
            ratio[f"{runtime}_fp32_vs_eager"] = faster("pytorch_eager", f"{runtime}_fp32")
            ratio[f"{runtime}_int8_vs_fp32"] = faster(f"{runtime}_fp32", f"{runtime}_int8")
    return ratio


def target_checks(ratio: dict[str, float]) -> dict[str, bool]:
    band = TARGETS["harness_band"]
    checks = {
        "openvino_fp32_>=3x_eager": ratio["openvino_fp32_vs_eager"] >= TARGETS["openvino_fp32_vs_eager"],
        "onnxruntime_fp32_>=2x_eager": ratio["onnxruntime_fp32_vs_eager"]
        >= TARGETS["onnxruntime_fp32_vs_eager"],
        "onnxruntime_int8_>=1.5x_fp32": ratio["onnxruntime_int8_vs_fp32"] >= TARGETS["int8_vs_fp32"],
        "openvino_int8_>=1.5x_fp32": ratio["openvino_int8_vs_fp32"] >= TARGETS["int8_vs_fp32"],
        "harness_within_10%_of_benchmark_app": abs(ratio["harness_vs_benchmark_app"] - 1) <= band,
    }
    if "harness_vs_onnxruntime_perf_test" in ratio:
        checks["harness_within_10%_of_onnxruntime_perf_test"] = (
            abs(ratio["harness_vs_onnxruntime_perf_test"] - 1) <= band
        )
    return checks


def measure_subject(subject: Subject, args: argparse.Namespace, config: LatencyConfig) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"edgekd-speed-{subject.name}-") as work:
        print(f"{subject.name}: exporting", flush=True)
        artifacts = export_artifacts(subject, Path(work), args.edge)
        runners = make_runners(subject, artifacts, args.threads)
        backends = time_backends(subject, runners, config, args.rounds)
        parity = check_outputs(subject, runners)
        app = harness_vs_benchmark_app(
            subject, artifacts["openvino_fp32"].path, args.threads, args.app_seconds, args.app_repeats
        )
        perf_test = harness_vs_perf_test(
            subject,
            artifacts["onnxruntime_fp32"].path,
            args.threads,
            args.app_seconds,
            args.app_repeats,
            backends["onnxruntime_fp32"]["p50_ms"],
        )
        tools = edge_tools(subject, artifacts, backends, args)
        sizes = {key: artifact.size_bytes for key, artifact in artifacts.items()}
    p50 = {key: entry["p50_ms"] for key, entry in backends.items()}
    ratio = ratios(p50, app, perf_test)
    for runtime, tool in tools.items():
        if tool.get("available"):
            ratio[f"harness_vs_{runtime}_tool"] = tool["harness_vs_litert_benchmark"]
    return {
        **subject.notes,
        "input_shape": [1, *subject.io.image_shape],
        "params": sum(parameter.numel() for parameter in subject.model.parameters()),
        "p50_ms": p50,
        "ratios": ratio,
        "targets_met": target_checks(ratio),
        "harness_vs_benchmark_app": app,
        "harness_vs_onnxruntime_perf_test": perf_test,
        "edge_runtime_tools": tools,
        "parity_vs_eager": parity,
        "artifact_bytes": sizes,
        "backends": backends,
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_after": _load_average(),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a finished run folder (metrics.json, models/) for (a)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads of every backend")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per backend")
    parser.add_argument("--min-time", type=float, default=1.5, help="timed seconds per backend and round")
    parser.add_argument("--app-seconds", type=int, default=10, help="benchmark_app -t, and our run beside it")
    parser.add_argument("--app-repeats", type=int, default=2, help="benchmark_app runs, bracketed by ours")
    parser.add_argument("--calibration", type=int, default=32, help="random calibration images for (b), (c)")
    parser.add_argument("--models", default="student,resnet18,mobilenet_v2", help="comma-separated subset")
    parser.add_argument(
        "--edge-runtimes",
        default="auto",
        help="auto: LiteRT and ExecuTorch where their extras are installed; none; or a comma-separated list",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.edge = edge_runtimes(args.edge_runtimes)
    return args


def edge_runtimes(chosen: str) -> tuple[str, ...]:
    if chosen == "none":
        return ()
    if chosen == "auto":
        return tuple(runtime for runtime in EDGE_RUNTIMES if FORMATS[runtime].available)
    names = tuple(chosen.split(","))
    for runtime in names:
        if runtime not in EDGE_RUNTIMES:
            raise SystemExit(f"--edge-runtimes: '{runtime}' is not one of {', '.join(EDGE_RUNTIMES)}")
        if not FORMATS[runtime].available:
            raise SystemExit(f"--edge-runtimes: {runtime} is not installed ({FORMATS[runtime].install})")
    return names


def distribution_mb(names: tuple[str, ...]) -> dict[str, float]:
    """Installed size (MB) of each distribution here: the files its RECORD lists."""
    sizes = {}
    for name in names:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            continue
        total = sum(path.locate().stat().st_size for path in files if path.locate().is_file())
        sizes[name] = round(total / 1e6, 1)
    return sizes


def edge_installs(edge: tuple[str, ...]) -> dict[str, Any]:
    """What each measured edge extra adds (distributions found here, MB), and the versions measured."""
    record: dict[str, Any] = {}
    for runtime in edge:
        sizes = distribution_mb(EXTRA_DISTRIBUTIONS[runtime])
        record[runtime] = {
            "extra": FORMATS[runtime].install,
            "distributions_mb": sizes,
            "total_mb": round(sum(sizes.values())),
            "versions": {name: metadata.version(name) for name in sizes},
        }
    if "litert" in record:
        record["litert"]["runtime_only_mb (ai-edge-litert and its dependencies, no torch)"] = round(
            sum(distribution_mb(LITERT_RUNTIME_ONLY).values())
        )
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = LatencyConfig(
        batches=(1,),
        threads=args.threads,
        warmup_iters=10,
        warmup_s=0.5,
        min_iters=50,
        min_time_s=args.min_time,
    )
    makers = {
        "student": lambda: student_subject(args.run_dir),
        "resnet18": lambda: torchvision_subject("resnet18", args.calibration),
        "mobilenet_v2": lambda: torchvision_subject("mobilenet_v2", args.calibration),
    }
    started = time.perf_counter()
    load_before = _load_average()
    models = {}
    for name in args.models.split(","):
        subject = makers[name]()
        models[subject.name] = measure_subject(subject, args, config)
    result = {
        "benchmark": "batch-1 p50 latency per backend (edgekd latency harness), and the harness against "
        "OpenVINO benchmark_app (and onnxruntime_perf_test where it exists)",
        "command": " ".join(
            ["python", "benchmarks/export_speed.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment_record(threads=args.threads).to_dict(),
        # Other processes on a shared machine steal cores (eager PyTorch's OpenMP suffers most): a load
        # average above the core count means the numbers below are inflated and noisy.
        "load_average_1_5_15min": {"before": load_before, "after": _load_average()},
        "settings": {
            "threads": args.threads,
            "batch": 1,
            "rounds": args.rounds,
            "p50": "median over rounds of each round's p50",
            "latency_config": config.to_dict(),
            "openvino_inference_precision": "f32 for fp32 and int8 IRs; f16 for the fp16 IR where the CPU has "
            "native f16 (else f32); never the plugin's bf16 default",
            "onnxruntime": "CPU provider, intra_op_num_threads=threads, inter_op 1, sequential, ORT_ENABLE_ALL",
            "int8": "onnx: onnxruntime static QDQ (symmetric, per-channel weights, minmax); openvino: NNCF PTQ "
            "(performance preset); litert: ai-edge-quantizer static_wi8_ai8 (int8 input and output); "
            "executorch: PT2E with XNNPACK's quantizer (float input and output); calibration images per model "
            "under models.<name>.images",
            "edge_runtimes": "litert: ai-edge-litert's Interpreter with its default XNNPACK delegate, .tflite "
            "at batch 1; executorch: the .pte lowered to XNNPACK, run by ExecuTorch's Python runtime",
            "ratios": "x faster = baseline p50 / candidate p50; harness_vs_benchmark_app = our p50 / its median",
            "timed_call": "every p50 here is of the bound inference call (Runner.bind_inference: the batch "
            "bound once, no input conversion; see each backend's timed_call), not of run() on a host array",
            "benchmark_app_note": "benchmark_app (the Python tool installed with openvino) calls "
            "request.infer() in a loop and reports the median of request.latency, the time the InferRequest "
            "measures in C++ around the inference. Our harness times from Python, with time.perf_counter_ns, "
            "the call OpenVinoRunner.bind_inference returns: InferRequest.infer() on an input tensor set "
            "once, on the static batch-1 copy prepare_batch compiled (as benchmark_app -shape runs it). "
            "What is left between the two is the Python binding's round trip (pybind dispatch, releasing "
            "and taking back the GIL, the results dict with its copy of the logits), measured per model in "
            "a tight loop under harness_vs_benchmark_app.python_call_cost. -nthreads cannot be combined with "
            "-hint latency in benchmark_app, so INFERENCE_NUM_THREADS is given through -load_config.",
            "targets": TARGETS,
        },
        "models": models,
        "edge_runtimes": {
            "measured": list(args.edge),
            "not_measured": {
                runtime: FORMATS[runtime].install for runtime in EDGE_RUNTIMES if runtime not in args.edge
            },
            "installs": edge_installs(args.edge),
            "torch": torch.__version__,
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {name: {"p50_ms": m["p50_ms"], "ratios": m["ratios"]} for name, m in models.items()}, indent=2
        )
    )
    return result


if __name__ == "__main__":
    main()
