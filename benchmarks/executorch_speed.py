"""Batch-1 latency of the quickstart student on ExecuTorch (FP32, INT8) beside ONNX Runtime and OpenVINO, in
one run of the same harness as benchmarks/export_speed.py (its exports, runners and interleaved rounds), with
LiteRT's numbers from benchmarks/results/litert_speed.json quoted beside them, plus what the `executorch`
extra costs to install and the torch it was verified with.

Needs the `executorch` extra (`pip install -e '.[executorch]'`). Writes
benchmarks/results/executorch_speed.json:

    python benchmarks/executorch_speed.py [--run-dir runs/quickstart] [--threads 2] [--rounds 3] \
        [--site-packages-before "5.5 GB (du, torch installed, before the extra)"]

LiteRT is quoted, not measured here: litert-torch and executorch were never installed in one environment,
and the quoted run's machine load may differ (both files record their load averages). ExecuTorch's
threadpool is sized once for the process (see edgekd/bench/runners/executorch_runner.py), to ``--threads``.
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

# export_speed.py and litert_speed.py, beside this script, hold the shared harness and the size reader.
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
from litert_speed import distribution_mb

from edgekd.bench import LatencyConfig, environment_record
from edgekd.exporters import Artifact, ExportOptions, get_exporter

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "executorch_speed.json"
LITERT_RESULTS = ROOT / "benchmarks" / "results" / "litert_speed.json"
# What `pip install 'edgekd[executorch]'` adds beside edgekd's train extra (proto-28's pip dry run and this
# environment's freeze): the two pinned packages and the heavy dependencies executorch pulls in.
EXTRA_DISTRIBUTIONS = (
    "executorch",
    "torchao",
    "pandas",
    "coremltools",
    "hydra-core",
    "omegaconf",
    "pytorch-tokenizers",
    "tiktoken",
    "ruamel.yaml",
    "flatbuffers",
    "expecttest",
    "parameterized",
    "tabulate",
    "pyre-extensions",
    "mpmath",
)


def executorch_artifacts(subject: Subject, out_dir: Path) -> dict[str, Artifact]:
    options = ExportOptions(calibration_size=len(subject.calibration))
    exporter = get_exporter("executorch")
    return {
        f"executorch_{precision}": exporter.export(
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


def install_size(before: str | None) -> dict[str, Any]:
    extra = distribution_mb(EXTRA_DISTRIBUTIONS)
    site = Path(torch.__file__).resolve().parents[1]
    after_mb = round(sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 1e6)
    return {
        "extra_distributions_mb": extra,
        "extra_total_mb": round(sum(extra.values())),
        "site_packages_mb_now": after_mb,
        "site_packages_before_extra": before,
        "torch": torch.__version__,
        "runs_without_torch": False,
        "versions": {name: metadata.version(name) for name in extra},
    }


def quoted_litert() -> dict[str, Any] | None:
    """LiteRT's batch-1 p50s from its own results file, labelled with where and when they were taken."""
    if not LITERT_RESULTS.is_file():
        return None
    recorded = json.loads(LITERT_RESULTS.read_text())
    (name, model), *_ = recorded["models"].items()
    return {
        "source": str(LITERT_RESULTS.relative_to(ROOT)),
        "date": recorded["date"],
        "model": name,
        "threads": recorded["settings"]["threads"],
        "load_average_1_5_15min": recorded["load_average_1_5_15min"],
        "p50_ms": {key: value for key, value in model["p50_ms"].items() if key.startswith("litert")},
    }


def measure(subject: Subject, threads: int, rounds: int, config: LatencyConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgekd-executorch-speed-") as work:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            artifacts = export_artifacts(subject, Path(work))
            artifacts.pop("openvino_fp16")  # the comparison is ExecuTorch's precisions on the other runtimes
            artifacts.update(executorch_artifacts(subject, Path(work)))
        runners = make_runners(subject, artifacts, threads)
        backends = time_backends(subject, runners, config, rounds)
        parity = check_outputs(subject, runners)
        sizes = {key: artifact.size_bytes for key, artifact in artifacts.items()}
        lowering = {
            key: artifact.details["lowering"]
            for key, artifact in artifacts.items()
            if "lowering" in artifact.details
        }
    return {
        **subject.notes,
        "input_shape": [1, *subject.io.image_shape],
        "p50_ms": {key: entry["p50_ms"] for key, entry in backends.items()},
        "parity_vs_eager": parity,
        "artifact_bytes": sizes,
        "executorch_lowering": lowering,
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
        "benchmark": "batch-1 p50 of the quickstart student: ExecuTorch FP32/INT8 beside ONNX Runtime and "
        "OpenVINO (measured here) and LiteRT (quoted from its own run)",
        "command": " ".join(["python", "benchmarks/executorch_speed.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment_record(threads=args.threads).to_dict(),
        "load_average_1_5_15min": {"before": load_before, "after": None},
        "settings": {
            "threads": args.threads,
            "rounds": args.rounds,
            "p50": "median over interleaved rounds of each round's p50 (export_speed.py's harness)",
            "latency_config": config.to_dict(),
            "executorch": "ExecuTorch Python runtime, XNNPACK delegate, threadpool sized to --threads before "
            "the first load; .pte with a dynamic batch of 1..15; INT8 by PT2E (XNNPACKQuantizer, per-channel "
            "symmetric), float I/O",
        },
        "models": {subject.name: measure(subject, args.threads, args.rounds, config)},
        "litert_quoted": quoted_litert(),
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
