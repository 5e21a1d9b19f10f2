"""Batch-1 latency of the quickstart student on LiteRT (FP32, INT8) beside ONNX Runtime and OpenVINO, in one
run of the same harness as benchmarks/export_speed.py (its exports, runners and interleaved rounds), plus
what the `litert` extra costs to install and the torch it was verified with.

Needs the `litert` extra (`pip install -e '.[litert]'`). Writes benchmarks/results/litert_speed.json:

    python benchmarks/litert_speed.py [--run-dir runs/quickstart] [--threads 2] [--rounds 3] \
        [--site-packages-before "5.5 GB (du, torch installed, before the extra)"]

The install size is measured here as the bytes of the distributions the extra adds beside torch (the
``EXTRA_DISTRIBUTIONS`` below, found in this environment); ``--site-packages-before`` records the size of
site-packages measured (du) before the extra was installed, as given (this script cannot see the past).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# export_speed.py, beside this script, holds the shared harness (exports, runners, interleaved rounds).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_speed import (
    Subject,
    _load_average,
    check_outputs,
    export_artifacts,
    make_runners,
    student_subject,
    time_backends,
)

from edgekd.bench import LatencyConfig, environment_record
from edgekd.exporters import Artifact, ExportOptions, get_exporter

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "litert_speed.json"
# What `pip install 'edgekd[litert]'` adds beside edgekd's train extra (the pip dry run of proto-28 and this
# environment's freeze): the three pinned packages and the heavy dependencies they pull in.
EXTRA_DISTRIBUTIONS = (
    "litert-torch",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "litert-converter",
    "jax",
    "jaxlib",
    "transformers",
    "torchao",
    "litert-lm-builder",
    "kagglehub",
    "tokenizers",
    "safetensors",
    "ml_dtypes",
    "opt_einsum",
    "flatbuffers",
    "absl-py",
)
RUNTIME_ONLY = ("ai-edge-litert", "flatbuffers", "ml_dtypes", "tqdm", "protobuf")


def litert_artifacts(subject: Subject, out_dir: Path) -> dict[str, Artifact]:
    options = ExportOptions(calibration_size=len(subject.calibration))
    exporter = get_exporter("litert")
    return {
        f"litert_{precision}": exporter.export(
            subject.model,
            subject.io,
            precision,
            out_dir,
            options=options,
            calibration=subject.calibration if precision == "int8" else None,
            stem=subject.name,
        )
        for precision in ("fp32", "int8")
    }


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


def install_size(before: str | None) -> dict[str, Any]:
    extra = distribution_mb(EXTRA_DISTRIBUTIONS)
    runtime = distribution_mb(RUNTIME_ONLY)
    site = Path(torch.__file__).resolve().parents[1]
    after_mb = round(sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 1e6)
    return {
        "extra_distributions_mb": extra,
        "extra_total_mb": round(sum(extra.values())),
        "runtime_only_mb (ai-edge-litert and its dependencies, no torch)": round(sum(runtime.values())),
        "site_packages_mb_now": after_mb,
        "site_packages_before_extra": before,
        "torch": torch.__version__,
        "versions": {name: metadata.version(name) for name in extra},
    }


def measure(subject: Subject, threads: int, rounds: int, config: LatencyConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgekd-litert-speed-") as work:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            artifacts = export_artifacts(subject, Path(work))
            artifacts.pop("openvino_fp16")  # the comparison is LiteRT's precisions on the other CPU runtimes
            artifacts.update(litert_artifacts(subject, Path(work)))
        runners = make_runners(subject, artifacts, threads)
        backends = time_backends(subject, runners, config, rounds)
        parity = check_outputs(subject, runners)
        sizes = {key: artifact.size_bytes for key, artifact in artifacts.items()}
    return {
        **subject.notes,
        "input_shape": [1, *subject.io.image_shape],
        "p50_ms": {key: entry["p50_ms"] for key, entry in backends.items()},
        "parity_vs_eager": parity,
        "artifact_bytes": sizes,
        "backends": backends,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir", type=Path, help="a finished quickstart run folder (else an untrained one)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.5)
    parser.add_argument("--site-packages-before", help="du of site-packages before the extra, as measured")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = LatencyConfig(
        batches=(1,),
        threads=args.threads,
        warmup_iters=10,
        warmup_s=0.5,
        min_iters=50,
        min_time_s=args.min_time,
    )
    started, load_before = time.perf_counter(), _load_average()
    subject = student_subject(args.run_dir)
    result = {
        "benchmark": "batch-1 p50 of the quickstart student: LiteRT FP32/INT8 beside ONNX Runtime and OpenVINO",
        "command": " ".join(["python", "benchmarks/litert_speed.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment_record(threads=args.threads).to_dict(),
        "load_average_1_5_15min": {"before": load_before, "after": _load_average()},
        "settings": {
            "threads": args.threads,
            "rounds": args.rounds,
            "p50": "median over interleaved rounds of each round's p50 (export_speed.py's harness)",
            "latency_config": config.to_dict(),
            "litert": "ai-edge-litert Interpreter, default XNNPACK delegate; .tflite at batch 1; INT8 by "
            "ai-edge-quantizer static_wi8_ai8 (int8 I/O, quantized once when the batch is bound)",
        },
        "models": {subject.name: measure(subject, args.threads, args.rounds, config)},
        "install": install_size(args.site_packages_before),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    result["load_average_1_5_15min"]["after"] = _load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["models"][subject.name]["p50_ms"], indent=2))
    return result


if __name__ == "__main__":
    main()
