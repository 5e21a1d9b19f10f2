"""ONNX Runtime's CUDA execution provider on this machine's GPU: FP32 and FP16 ONNX artifacts of the
CIFAR-size student (WRN-16-2, 3×32×32, 100 classes) and of a ResNet-18-size model (torchvision resnet18,
3×224×224, 1000 classes), each timed with edgekd's latency harness at batch 1 and 64 and checked for parity
against PyTorch (FP32 on the CPU) with the tolerance edgekd.formats declares for its precision.

Both models have random weights (seeded); their BatchNorm statistics are set from the parity images, so
activations keep a trained network's scale and FP16 parity means something. Latency does not depend on the
weights' values; the images are random standard-normal ones, as the model is fed them (normalized).

Needs an NVIDIA GPU and onnxruntime-gpu installed in place of onnxruntime (README: "ONNX Runtime on a
GPU"). Where the CUDA provider cannot run, it prints ``not measured: <why>``, writes nothing and exits 0.
Otherwise it writes benchmarks/results/ort_cuda.json (machine, library versions, command, every timing and
parity result), prints a short table, and exits 1 if an artifact failed its parity check. onnxruntime-gpu
1.31 logs "[cudnn_frontend] Error: No execution plans support the graph" lines while its CUDA provider tries
cuDNN's newer API for FP16 convolutions; it then uses other kernels (the parity and timings are checked):

    python benchmarks/ort_cuda.py [--batches 1,64] [--min-time 2] [--timeout 900] [--out FILE]
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.bench import LatencyConfig, OnnxRuntimeRunner, check_parity, environment_record, measure_latency
from edgekd.exporters import ModelIO, get_exporter
from edgekd.models import create_model
from edgekd.preflight import onnxruntime_cuda_missing
from edgekd.sizing.measure import set_batchnorm_statistics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ort_cuda.json"
PRECISIONS = ("fp32", "fp16")
CIFAR_IO = ModelIO(3, 32, 32, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276), tuple(map(str, range(100))))
IMAGENET_IO = ModelIO(3, 224, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), tuple(map(str, range(1000))))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,64", help="batch sizes timed, comma-separated")
    parser.add_argument("--min-time", type=float, default=2.0, help="timed seconds per batch size, at least")
    parser.add_argument("--min-iters", type=int, default=100, help="timed runs per batch size, at least")
    parser.add_argument("--parity-images", type=int, default=256, help="random images compared with PyTorch")
    parser.add_argument("--models", default="wrn_16_2,resnet18", help="comma-separated subset")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds before the run is stopped (stack dumped, exit 1)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ models
def cifar_student() -> tuple[nn.Module, ModelIO, str]:
    torch.manual_seed(0)
    model = create_model("wrn_16_2", num_classes=100, in_channels=3)
    return model, CIFAR_IO, "edgekd.models.create_model('wrn_16_2', 100, 3): the CIFAR-100-size student"


def resnet18() -> tuple[nn.Module, ModelIO, str]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=1000)
    return model, IMAGENET_IO, "torchvision.models.resnet18(weights=None): ResNet-18 at 224x224, 1000 classes"


MODELS = {"wrn_16_2": cifar_student, "resnet18": resnet18}


# --------------------------------------------------------------------------------------------- measuring
def measure_model(name: str, args: argparse.Namespace, config: LatencyConfig, folder: Path) -> dict[str, Any]:
    model, io, source = MODELS[name]()
    images = np.random.default_rng(0).standard_normal((args.parity_images, *io.image_shape), dtype=np.float32)
    set_batchnorm_statistics(model, images)  # leaves the model in eval mode
    with torch.inference_mode():
        reference = torch.cat([model(torch.from_numpy(chunk)) for chunk in np.array_split(images, 8)]).numpy()
    fp32 = get_exporter("onnx").export(model, io, "fp32", folder, stem=name)
    fp16 = get_exporter("onnx").export(model, io, "fp16", folder, onnx_fp32=fp32, stem=name)
    result: dict[str, Any] = {
        "source": source + "; random weights (seed 0), BatchNorm statistics from the parity images",
        "params": sum(p.numel() for p in model.parameters()),
        "input_shape": list(io.image_shape),
        "images": f"{len(images)} random standard-normal images (seed 0): parity, BatchNorm statistics, timing",
        "artifacts": {},
    }
    for artifact in (fp32, fp16):
        print(f"  {name} {artifact.precision} ...", flush=True)
        runner = OnnxRuntimeRunner(artifact.path, device="cuda", precision=artifact.precision)
        latency = measure_latency(runner, images, config)
        parity = check_parity(reference, runner.run(images), artifact.precision)
        result["artifacts"][artifact.precision] = {
            "size_bytes": artifact.size_bytes,
            "export": artifact.details,
            "runs_on": runner.runs_on(),
            "parity": parity.to_dict(),
            "latency": latency.to_dict(),
        }
    return result


def machine_record() -> dict[str, Any]:
    """The GPU and the CUDA libraries, beside edgekd's environment record (CPU, packages)."""
    import onnxruntime

    properties = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
        "compute_capability": f"{properties.major}.{properties.minor}",
        "torch_cuda": torch.version.cuda,
        "torch_cudnn": torch.backends.cudnn.version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def command_line(argv: list[str] | None) -> str:
    return " ".join(["python", "benchmarks/ort_cuda.py", *(argv if argv is not None else sys.argv[1:])])


# ------------------------------------------------------------------------------------------------ output
def table(models: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        f"{'model':<10} {'precision':<9} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'img/s':>9}  parity",
    ]
    for name, measured in models.items():
        for precision, artifact in measured["artifacts"].items():
            parity = artifact["parity"]
            verdict = "ok" if parity["passed"] else "FAIL"
            summary = f"{verdict} (max {parity['max_abs']:.1e}, top-1 {100 * parity['top1_agreement']:.1f}%)"
            for timing in artifact["latency"]["batches"]:
                lines.append(
                    f"{name:<10} {precision:<9} {timing['batch']:>5} {timing['p50_ms']:>9.4f} "
                    f"{timing['p90_ms']:>9.4f} {timing['throughput']:>9.0f}  {summary}"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = [name for name in args.models.split(",") if name not in MODELS]
    if unknown:
        print(f"--models: {', '.join(unknown)} not known; allowed: {', '.join(MODELS)}")
        return 2
    why = onnxruntime_cuda_missing()
    if why is not None:
        print(f"not measured: {why}")
        return 0
    # Never hangs: past the limit the stacks are printed and the process exits (code 1), nothing written.
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    batches = tuple(int(batch) for batch in args.batches.split(","))
    config = LatencyConfig(
        batches=batches, warmup_iters=20, warmup_s=1.0, min_iters=args.min_iters, min_time_s=args.min_time
    )
    started = time.perf_counter()
    models = {}
    with tempfile.TemporaryDirectory(prefix="edgekd-ort-cuda-") as folder:
        for name in args.models.split(","):
            models[name] = measure_model(name, args, config, Path(folder))
    result = {
        "benchmark": "FP32 and FP16 ONNX on ONNX Runtime's CUDA execution provider: edgekd latency harness "
        "(bound call, IO in CUDA memory) and parity against PyTorch FP32 on the CPU",
        "command": command_line(argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_record(),
        "environment": environment_record().to_dict(),
        "settings": {
            "latency_config": config.to_dict(),
            "providers": "CUDAExecutionProvider (use_tf32=0, else its defaults), CPUExecutionProvider for "
            "nodes CUDA has no kernel for; intra_op threads: onnxruntime default",
            "fp16": "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True): float16 "
            "weights and arithmetic, float32 input and logits",
            "parity": "edgekd.formats.PARITY_DEFAULTS of each precision, against PyTorch FP32 on the CPU",
            "p50": "median of the timed runs of the bound call (InferenceSession.run_with_iobinding, input "
            "and logits bound once in CUDA memory; onnxruntime synchronizes the CUDA stream at the end of "
            "each run)",
        },
        "models": models,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    faulthandler.cancel_dump_traceback_later()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['machine']['gpu']}, onnxruntime {result['machine']['onnxruntime']}, CUDA EP:")
    print("\n".join(table(models)))
    print(f"written: {args.out}")
    failed = [
        f"{name} {precision}"
        for name, measured in models.items()
        for precision, artifact in measured["artifacts"].items()
        if not artifact["parity"]["passed"]
    ]
    if failed:
        print(f"parity failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
