"""Batch-1 latency of three models on every CPU backend, side by side in one run, against the issue's targets.

Models: (a) the quickstart student (from a run folder's models/, or an untrained resnet8 width 8 on 8×8
digits), (b) torchvision ResNet-18 and (c) MobileNetV2 (random weights, 224×224, 1000 classes). Backends:
eager PyTorch, ONNX Runtime FP32/INT8 and OpenVINO FP32/FP16/INT8, all through edgekd's runners and latency
harness at one fixed thread count. Every backend is measured in several interleaved rounds (so that a burst
of load on a shared machine hits all of them alike) and its p50 is the median of the rounds' p50s.

The harness is checked against OpenVINO's own ``benchmark_app`` on the same FP32 IR (median latency, sync
API, latency hint, same threads and f32 precision), measured right before and after benchmark_app.

Writes benchmarks/results/export_speed.json with the machine, every p50 and the ratios the issue asks for:

    python benchmarks/export_speed.py [--run-dir runs/quickstart] [--threads 2] [--rounds 3]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from edgekd.bench import (
    LatencyConfig,
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
def export_artifacts(subject: Subject, out_dir: Path) -> dict[str, Artifact]:
    """ONNX FP32 first; ONNX INT8 and the OpenVINO IRs are made from it, as `edgekd build` does."""
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


# --------------------------------------------------------------------------------------- benchmark_app
def benchmark_app_median(xml: Path, io: ModelIO, threads: int, seconds: int) -> dict[str, Any]:
    """OpenVINO's benchmark_app on the same IR at batch 1; its median latency in ms.

    benchmark_app refuses -nthreads together with -hint latency (a rule of its command line, not of
    OpenVINO), so the thread count goes in through -load_config, which sets the same CPU property.
    """
    app = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
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
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    match = _MEDIAN_LINE.search(output)
    if completed.returncode != 0 or match is None:
        tail = " | ".join(output.strip().splitlines()[-3:])
        raise RuntimeError(f"benchmark_app failed (exit {completed.returncode}): {tail}")
    shown = [part if part != str(config) else "<config.json>" for part in command]
    return {
        "median_ms": round(float(match.group(1)) * _MS_PER_UNIT[match.group(2)], 4),
        "command": " ".join(Path(shown[0]).name if i == 0 else part for i, part in enumerate(shown)),
        "load_config": {"CPU": {"INFERENCE_NUM_THREADS": str(threads)}},
    }


def harness_vs_benchmark_app(
    subject: Subject, xml: Path, threads: int, seconds: int, repeats: int
) -> dict[str, Any]:
    """Alternate our harness (a fresh OpenVINO FP32 runner) and benchmark_app on the same IR at batch 1.

    Our runs bracket each benchmark_app run (ours, app, ours, app, ..., ours), each side is summarized by
    the median of its runs, so a burst of load from another process skews one run and not the comparison.
    """
    runner = OpenVinoRunner(xml, threads=threads, precision="fp32", hint="latency")
    config = LatencyConfig(batches=(1,), threads=threads, warmup_s=1.0, min_iters=50, min_time_s=seconds / 2)
    print(f"  {subject.name}: harness vs benchmark_app ({repeats} x {seconds} s)", flush=True)
    ours = [measure_latency(runner, subject.images, config).at_batch(1).p50_ms]
    apps = []
    for _ in range(repeats):
        apps.append(benchmark_app_median(xml, subject.io, threads, seconds))
        ours.append(measure_latency(runner, subject.images, config).at_batch(1).p50_ms)
    harness = statistics.median(ours)
    app_median = statistics.median(app["median_ms"] for app in apps)
    return {
        "harness_p50_ms": round(harness, 4),
        "harness_p50_ms_runs": [round(value, 4) for value in ours],
        "benchmark_app_median_ms": round(app_median, 4),
        "benchmark_app_median_ms_runs": [app["median_ms"] for app in apps],
        "harness_vs_benchmark_app": round(harness / app_median, 3),
        "benchmark_app": {key: apps[0][key] for key in ("command", "load_config")},
    }


# ------------------------------------------------------------------------------------------------ report
def ratios(p50: dict[str, float], app: dict[str, Any]) -> dict[str, float]:
    """Speed-ups as 'how many times faster' (baseline p50 / candidate p50); the harness check as our/theirs."""

    def faster(baseline: str, candidate: str) -> float:
        return round(p50[baseline] / p50[candidate], 3)

    return {
        "openvino_fp32_vs_eager": faster("pytorch_eager", "openvino_fp32"),
        "onnxruntime_fp32_vs_eager": faster("pytorch_eager", "onnxruntime_fp32"),
        "onnxruntime_int8_vs_fp32": faster("onnxruntime_fp32", "onnxruntime_int8"),
        "openvino_int8_vs_fp32": faster("openvino_fp32", "openvino_int8"),
        "openvino_fp16_vs_fp32": faster("openvino_fp32", "openvino_fp16"),
        "harness_vs_benchmark_app": app["harness_vs_benchmark_app"],
    }


def target_checks(ratio: dict[str, float]) -> dict[str, bool]:
    band = TARGETS["harness_band"]
    return {
        "openvino_fp32_>=3x_eager": ratio["openvino_fp32_vs_eager"] >= TARGETS["openvino_fp32_vs_eager"],
        "onnxruntime_fp32_>=2x_eager": ratio["onnxruntime_fp32_vs_eager"]
        >= TARGETS["onnxruntime_fp32_vs_eager"],
        "onnxruntime_int8_>=1.5x_fp32": ratio["onnxruntime_int8_vs_fp32"] >= TARGETS["int8_vs_fp32"],
        "openvino_int8_>=1.5x_fp32": ratio["openvino_int8_vs_fp32"] >= TARGETS["int8_vs_fp32"],
        "harness_within_10%_of_benchmark_app": abs(ratio["harness_vs_benchmark_app"] - 1) <= band,
    }


def measure_subject(subject: Subject, args: argparse.Namespace, config: LatencyConfig) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"edgekd-speed-{subject.name}-") as work:
        print(f"{subject.name}: exporting", flush=True)
        artifacts = export_artifacts(subject, Path(work))
        runners = make_runners(subject, artifacts, args.threads)
        backends = time_backends(subject, runners, config, args.rounds)
        parity = check_outputs(subject, runners)
        app = harness_vs_benchmark_app(
            subject, artifacts["openvino_fp32"].path, args.threads, args.app_seconds, args.app_repeats
        )
        sizes = {key: artifact.size_bytes for key, artifact in artifacts.items()}
    p50 = {key: entry["p50_ms"] for key, entry in backends.items()}
    ratio = ratios(p50, app)
    return {
        **subject.notes,
        "input_shape": [1, *subject.io.image_shape],
        "params": sum(parameter.numel() for parameter in subject.model.parameters()),
        "p50_ms": p50,
        "ratios": ratio,
        "targets_met": target_checks(ratio),
        "harness_vs_benchmark_app": app,
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
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


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
        "OpenVINO benchmark_app",
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
            "(performance preset); calibration images per model under models.<name>.images",
            "ratios": "x faster = baseline p50 / candidate p50; harness_vs_benchmark_app = our p50 / its median",
            "benchmark_app_note": "benchmark_app's median is the latency the InferRequest measures in C++; ours "
            "is the wall time of OpenVinoRunner.run() from Python (set input, infer, copy logits), so it also "
            "holds ~5-10 us of Python binding cost: invisible at ResNet-18 size, a quarter of a 30 us model. "
            "benchmark_app gets the IR reshaped to a static batch of 1 (-shape); our harness has the runner "
            "compile a static copy per timed batch size too (prepare_batch: a dynamic batch costs ~10 us per "
            "call in shape inference, measured on the quickstart student). -nthreads cannot be combined with "
            "-hint latency in benchmark_app, so INFERENCE_NUM_THREADS is given through -load_config.",
            "targets": TARGETS,
        },
        "models": models,
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
