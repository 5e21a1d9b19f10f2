"""How much INT8 accuracy each path recovers: PTQ, accuracy-controlled PTQ, QAT and QAD on students where
PTQ hurts, paired by seed.

For each configuration (a shipped recipe at a budget) the teacher is trained once, then for each seed the
method's student is trained as `edgekd build` trains it, and that one FP32 student is deployed four times,
once per `export.int8.mode` (ptq, accuracy_control, qat, qad), to ONNX Runtime and OpenVINO INT8 through
edgekd's own deployment stage (edgekd.deploy.deploy: the same exporters, checks and latency harness).
Recorded per seed and artifact: test accuracy, its drop against the FP32 student, validation accuracy,
p50 latency (batch 1, the recipe's threads), the graph's quantize and convolution op counts, and the
quantization-aware stage's training time. Summaries: each path's drop (mean ± std, 95 % t-interval over
seeds), QAD minus QAT (paired), and each path's p50 relative to PTQ's.

Nothing is chosen here: the stage settings are export.int8's defaults (5 epochs, the recipe's rate / 100,
the method's KD temperature and alpha). Writes benchmarks/results/int8_recovery.json (or --results):

    python benchmarks/int8_recovery.py [--configs quickstart_6,quickstart_30,specialize] [--seeds 0,1,2,3,4]
    python benchmarks/int8_recovery.py --add --configs mobilenetv2_32     # one more into the results file
    python benchmarks/int8_recovery.py --interleaved-latency             # PTQ vs QAT p50, timed interleaved
    python benchmarks/int8_recovery.py --table                           # the README table
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "int8_recovery.json"
PATHS = ("ptq", "accuracy_control", "qat", "qad")
TARGETS = "{onnx: [int8], openvino: [int8]}"


@dataclass(frozen=True)
class Config:
    recipe: str
    method: str
    overrides: tuple[str, ...]
    about: str


CONFIGS = {
    "quickstart_6": Config(
        "quickstart.yaml",
        "kd",
        ("train.epochs=6",),
        "the quickstart's KD student (resnet8 width 8) trained for 6 epochs: an under-trained student",
    ),
    "quickstart_30": Config(
        "quickstart.yaml", "kd", (), "the quickstart's KD student at its recipe's 30 epochs"
    ),
    "specialize": Config(
        "digits_specialize.yaml",
        "skd",
        (),
        "the digits specialization student (SKD, 5 classes, 10 labelled images per class, 300 epochs)",
    ),
    "srm_fewshot": Config(
        "digits_srm_fewshot.yaml",
        "srm",
        ("distill.srm.transfer_check=null",),
        "the digits few-shot SRM student (5 labelled images per class, 300 epochs; the transfer check, which "
        "hands nothing on, skipped)",
    ),
    "crosstask": Config(
        "digits_crosstask.yaml",
        "refilled",
        ("distill.probes=[]",),
        "the digits cross-task REFILLED student (classes 5-9, teacher on 0-4: no QAD, its QAT instead)",
    ),
    "distpro": Config(
        "digits_distpro.yaml", "distpro", (), "the digits DistPro student (10-epoch search, 20-epoch replay)"
    ),
    "quickstart_latency": Config(
        "quickstart_latency.yaml",
        "kd",
        (),
        "the quickstart's KD student sized to 0.05 ms p50 on OpenVINO INT8 (30 epochs)",
    ),
    "mobilenetv2_32": Config(
        "quickstart.yaml",
        "kd",
        (
            "student={model: 'torchvision:mobilenet_v2', model_args: {width_mult: 0.5}}",
            "data.image_size=32",
            # At the quickstart's SGD rate 0.1 seed 1 diverged (NaN in epoch 18). Its gradient norms (training
            # loss only, no split evaluated): median 3-6 per epoch from epoch 4 on, spikes to 20-60 in every
            # epoch, 300 in the first two. 10 caps the spikes and leaves the typical step alone.
            "train.grad_clip=10",
        ),
        "torchvision MobileNetV2 (width 0.5) at 32x32 on the digits, the quickstart's KD and teacher (gradient "
        "norm clipped at 10)",
    ),
}


def recipe_for(config: Config, seeds: list[int], output_dir: str):
    from edgekd.config.loading import load_recipe

    overrides = [
        *config.overrides,
        f"output_dir={output_dir}",
        f"seeds={seeds}",
        f"distill.method={config.method}",
        "distill.baselines=[]",
        f"report.reference={config.method}",  # the recipe's reference is one of the baselines dropped
        f"export.targets={TARGETS}",
        "export.models=main",
        "benchmark.batches=[1]",
    ]
    return load_recipe(ROOT / "recipes" / config.recipe, overrides), overrides


def graph_ops(path: str) -> dict[str, int]:
    """The ops that show a graph's shape: quantizers, convolutions, BatchNorms."""
    if path.endswith(".onnx"):
        import onnx

        ops = [node.op_type for node in onnx.load(path).graph.node]
        names = ("QuantizeLinear", "DequantizeLinear", "Conv", "BatchNormalization", "FakeQuantize")
    else:
        import openvino as ov

        ops = [op.get_type_name() for op in ov.Core().read_model(path).get_ops()]
        names = ("FakeQuantize", "Convolution", "GroupConvolution", "Multiply")
    return {name: ops.count(name) for name in names}


def deploy_path(config: Config, p, student, params: int, seed: int, path: str, source, out_dir: Path):
    from edgekd.deploy import deploy

    export = p.recipe.export.model_copy(
        update={"int8": p.recipe.export.int8.model_copy(update={"mode": path})}
    )
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        deployment = deploy(
            student,
            params,
            p.student_data_for(seed),
            export,
            p.recipe.benchmark,
            out_dir,
            stem=f"{config.method}_seed{seed}_{path}",
            quantization_aware=source,
        )
    wall = time.perf_counter() - started
    fp32 = deployment.records[0]
    stage = deployment.int8.paths[-1].stage if deployment.int8 else None
    artifacts = {}
    for record in deployment.records[1:]:
        artifacts[record.name] = {
            "test_acc": record.test_acc,
            "val_acc": record.val_acc,
            "test_drop": record.test_acc_drop,
            "p50_ms": (record.latency or {}).get("batches", [{}])[0].get("p50_ms")
            if record.latency
            else None,
            "parity_top1": (record.parity or {}).get("top1_agreement"),
            "gate_passed": (record.parity or {}).get("passed"),
            "graph": graph_ops(record.path),
        }
    return {
        "fp32_test_acc": fp32.test_acc,
        "fp32_val_acc": fp32.val_acc,
        "fp32_p50_ms": (fp32.latency or {}).get("batches", [{}])[0].get("p50_ms") if fp32.latency else None,
        "artifacts": artifacts,
        "stage": stage,
        "deploy_wall_s": round(wall, 1),
    }


def fp32_control(p, layout, config: Config, student, seed: int, teaches: bool) -> dict[str, Any]:
    """The FP32 student fine-tuned exactly as the QAD stage (QAT's where the teacher cannot teach) fine-tunes
    it (BatchNorms folded, edgekd's own fine_tune with the stage's settings, seeds and selection), without
    quantization: what the extra training alone gives, so that the quantization-aware INT8 accuracy can be
    read against it as well as against its starting point."""
    import copy

    from edgekd.distill.registry import resolve_method
    from edgekd.int8.fold import fold_batchnorms
    from edgekd.int8.stage import fine_tune, stage_objective, stage_settings, stage_train_config
    from edgekd.pipeline import student_context
    from edgekd.train.trainer import evaluate

    data = p.student_data_for(seed)
    model = copy.deepcopy(student).to(p.device)
    fold_batchnorms(model)
    options = stage_settings(p.recipe.export.int8, resolve_method(p.recipe.distill, config.method).options)
    objective = stage_objective(
        "qad" if teaches else "qat", model, p.teacher, options, student_context(p, data)
    )
    tuned = fine_tune(
        objective,
        data,
        stage_train_config(p.recipe.train, p.recipe.export.int8),
        seed=seed,
        out_dir=layout.method(config.method, seed).stage("fp32_control").path,
        device=p.device,
        label="fp32 control",
    )
    return {
        "test_acc": round(evaluate(model, data.eval_loader("test"), p.device)[0], 4),
        "val_acc": round(max(tuned.fit.best_val_acc, tuned.start_val_acc), 4),
        "train_time_s": round(tuned.fit.train_time_s, 1),
    }


NO_QAD = (
    "not run: the teacher shares none of the student's classes, so it has no logits to distil in the "
    "quantization-aware stage (edgekd refuses qad there; auto takes QAT)"
)


def paths_for(teaches: bool) -> tuple[str, ...]:
    return PATHS if teaches else tuple(path for path in PATHS if path != "qad")


def run_config(name: str, seeds: list[int]) -> dict[str, Any]:
    from edgekd.models.profile import count_params
    from edgekd.pipeline import evaluate_teacher, quantization_aware_source, train_student
    from edgekd.prepare import prepare
    from edgekd.runfolder import open_run_dir

    config = CONFIGS[name]
    with tempfile.TemporaryDirectory(prefix="edgekd-int8-") as work:
        recipe, overrides = recipe_for(config, seeds, work)
        p = prepare(recipe)
        layout = open_run_dir(recipe, resume=False, force=False)
        started = time.perf_counter()
        teacher, _ = evaluate_teacher(p, layout, resume=False, progress=None)
        runs = {}
        for seed in seeds:
            began = time.perf_counter()
            student, _, _ = train_student(p, layout, config.method, seed, resume=False, progress=None)
            trained = time.perf_counter() - began
            params = count_params(student)
            # the seed's quantization-aware stages; its teacher_teaches: QAD needs the teacher to predict
            # the student's classes (a cross-task teacher does not)
            source = quantization_aware_source(p, layout, config.method, student, False, None, seed=seed)
            teaches = source.teacher_teaches
            per_path = {
                path: deploy_path(config, p, student, params, seed, path, source, Path(work) / "artifacts")
                for path in paths_for(teaches)
            }
            control = fp32_control(p, layout, config, student, seed, teaches)
            runs[str(seed)] = {
                "student_train_s": round(trained, 1),
                "paths": per_path,
                "fp32_control": control,
            }
            print_seed(name, seed, per_path, flush=True)
        return {
            "about": config.about,
            "recipe": f"recipes/{config.recipe}",
            "overrides": overrides[: len(config.overrides)] + overrides[len(config.overrides) + 2 :],
            "teacher_test_acc": teacher.test_acc,
            "paths": list(paths_for(teaches)),
            **({} if teaches else {"qad": NO_QAD}),
            "params": params,
            "wall_time_s": round(time.perf_counter() - started, 1),
            # each configuration's own record: --add runs them in different sessions, on different CPUs
            **provenance(),
            "seeds": runs,
            "summary": summarize(runs),
        }


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    """Per artifact and path: the drop (mean ± std and t-interval over seeds), QAD - QAT paired, p50 vs PTQ."""
    from edgekd.report.stats import mean_interval, paired_difference

    seeds = sorted(runs, key=int)
    paths = list(runs[seeds[0]]["paths"])
    trained = "qad" if "qad" in paths else "qat"  # the quantization-aware path the control mirrors
    first = runs[seeds[0]]["paths"]["ptq"]["artifacts"]
    summary: dict[str, Any] = {}
    for artifact in first:
        rows = {}
        for path in paths:
            drops = [runs[s]["paths"][path]["artifacts"][artifact]["test_drop"] for s in seeds]
            interval = mean_interval(drops)
            p50 = [runs[s]["paths"][path]["artifacts"][artifact]["p50_ms"] for s in seeds]
            ptq_p50 = [runs[s]["paths"]["ptq"]["artifacts"][artifact]["p50_ms"] for s in seeds]
            ratios = [a / b for a, b in zip(p50, ptq_p50, strict=True) if a and b]
            stage_s = [(runs[s]["paths"][path]["stage"] or {}).get("train_time_s", 0.0) for s in seeds]
            rows[path] = {
                "test_acc_mean": round(
                    float(
                        np.mean([runs[s]["paths"][path]["artifacts"][artifact]["test_acc"] for s in seeds])
                    ),
                    4,
                ),
                "drop_mean": round(float(np.mean(drops)), 4),
                "drop_std": round(float(np.std(drops, ddof=1)), 4) if len(drops) > 1 else None,
                "drop_interval": None if interval is None else [round(v, 4) for v in interval],
                "p50_vs_ptq": round(float(np.median(ratios)), 3) if ratios else None,
                "stage_train_s_mean": round(float(np.mean(stage_s)), 1),
            }
        if "qad" in paths:
            qad = _accuracies(runs, "qad", artifact)
            rows["qad_minus_qat"] = paired_difference(
                qad, _accuracies(runs, "qat", artifact), reference_name="qat"
            )
        summary[artifact] = rows
    control = {int(s): runs[s]["fp32_control"]["test_acc"] for s in seeds}
    fp32_by_seed = {int(s): runs[s]["paths"]["ptq"]["fp32_test_acc"] for s in seeds}
    summary["fp32_control_test_acc_mean"] = round(float(np.mean(list(control.values()))), 4)
    summary["fp32_control_minus_fp32"] = paired_difference(control, fp32_by_seed, reference_name="fp32")
    summary["fp32_control_mirrors"] = trained
    for artifact in first:
        summary[artifact][f"{trained}_minus_fp32_control"] = paired_difference(
            _accuracies(runs, trained, artifact), control, reference_name="fp32 control"
        )
    fp32 = [runs[s]["paths"]["ptq"]["fp32_test_acc"] for s in seeds]
    summary["fp32_test_acc_mean"] = round(float(np.mean(fp32)), 4)
    summary["fp32_test_acc_std"] = round(float(np.std(fp32, ddof=1)), 4) if len(fp32) > 1 else None
    return summary


def _accuracies(runs: dict[str, Any], path: str, artifact: str) -> dict[int, float]:
    return {int(s): run["paths"][path]["artifacts"][artifact]["test_acc"] for s, run in runs.items()}


def print_seed(name: str, seed: int, per_path: dict[str, Any], flush: bool = True) -> None:
    fp32 = per_path["ptq"]["fp32_test_acc"]
    cells = []
    for path, result in per_path.items():
        accs = " ".join(f"{a['test_acc']:.2f}" for a in result["artifacts"].values())
        cells.append(f"{path} {accs}")
    print(f"{name} seed {seed}: fp32 {fp32:.2f} | " + " | ".join(cells), flush=flush)


def markdown(result: dict[str, Any]) -> str:
    """The README's table: per configuration and path, each INT8 artifact's test accuracy and drop against
    the FP32 student [95 % t-interval over seeds], p50 relative to PTQ's, the stage's training seconds."""
    lines = [
        "| student (FP32 test acc %) | path | ONNX Runtime INT8 % | drop [95 % CI] | OpenVINO INT8 % | drop [95 % CI]"
        " | p50 vs PTQ (ORT, OV) | stage s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, config in result["configs"].items():
        summary = config["summary"]
        fp32 = f"{summary['fp32_test_acc_mean']:.2f} ± {summary['fp32_test_acc_std'] or 0:.2f}"
        trained = summary.get("fp32_control_mirrors", "qad")
        for path in config.get("paths", PATHS):
            onnx, ov = summary["onnx int8"][path], summary["openvino int8"][path]
            lines.append(
                f"| {name} ({fp32}) | {path} | {onnx['test_acc_mean']:.2f} | {_drop(onnx)} | "
                f"{ov['test_acc_mean']:.2f} | {_drop(ov)} | {onnx['p50_vs_ptq']}, {ov['p50_vs_ptq']} | "
                f"{onnx['stage_train_s_mean']:.1f} |"
            )
        if "qad" in config:
            lines.append(
                f"| {name} | qad: not run (the teacher shares no class with the student) | | | | | | |"
            )
        control = summary["fp32_control_minus_fp32"]
        lines.append(
            f"| {name} | FP32 fine-tuned as {trained.upper()}, no quantization: "
            f"{summary['fp32_control_test_acc_mean']:.2f}, vs FP32 {_paired(control)} | | | | | |"
        )
        for artifact in ("onnx int8", "openvino int8"):
            versus = _paired(summary[artifact][f"{trained}_minus_fp32_control"])
            lines.append(f"| {name} | {trained.upper()} - FP32 control, {artifact}: {versus} | | | | | |")
            if "qad_minus_qat" not in summary[artifact]:
                continue
            paired = summary[artifact]["qad_minus_qat"]
            low, high = paired["interval"] or (float("nan"), float("nan"))
            lines.append(
                f"| {name} | QAD - QAT, {artifact} | {paired['mean']:+.2f} [{low:+.2f}, {high:+.2f}] "
                f"{paired['verdict']} | | | | | |"
            )
    return "\n".join(lines)


def _paired(paired: dict[str, Any]) -> str:
    low, high = paired["interval"] or (float("nan"), float("nan"))
    return f"{paired['mean']:+.2f} [{low:+.2f}, {high:+.2f}] {paired['verdict']}"


def _drop(row: dict[str, Any]) -> str:
    interval = row["drop_interval"]
    bounds = f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else " (the same on every seed)"
    return f"{row['drop_mean']:+.2f}{bounds}"


def interleaved_latency(rounds: int = 7, calls: int = 2000) -> dict[str, Any]:
    """PTQ's and the quantization-aware path's INT8 artifacts of one MobileNetV2 (width 0.5, 1x32x32, random
    weights with BatchNorm statistics from a few batches: latency does not depend on the values), timed
    interleaved in one process: `rounds` rounds, each artifact `calls` batch-1 calls per round after 200
    warm-up calls, 2 threads. The per-seed p50s of run_config are taken minutes apart, and this machine
    switches between speed modes about 2x apart over minutes (PTQ's own artifacts show both), which a ratio of
    two such p50s can land on; a ratio within one round cannot."""
    import torch
    import torchvision
    from torch import nn

    from edgekd.exporters import ModelIO, get_exporter
    from edgekd.int8.fake_quant import fake_quantize
    from edgekd.runtime import artifact_runner

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10)
    model.features[0][0] = nn.Conv2d(1, 16, 3, 2, 1, bias=False)
    images = np.random.default_rng(0).standard_normal((300, 1, 32, 32)).astype(np.float32)
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 50):
            model(torch.from_numpy(images[start : start + 50]))
    model.eval()
    io = ModelIO(1, 32, 32, (0.5,), (0.5,), tuple(str(d) for d in range(10)))
    fake = fake_quantize(model, images)
    runners = {}
    with tempfile.TemporaryDirectory(prefix="edgekd-int8-latency-") as work:
        for fmt in ("onnx", "openvino"):
            exporter = get_exporter(fmt)
            ptq = exporter.export(model, io, "int8", Path(work) / f"{fmt}_ptq", calibration=images)
            qat = exporter.export(
                nn.Identity(),
                io,
                "int8",
                Path(work) / f"{fmt}_qat",
                calibration=images,
                fake_quantized=fake.model,
            )
            # edgekd's own runners and bound call: what deploy's latency harness times
            runners[f"{fmt} ptq"] = bound_call(artifact_runner(ptq, threads=2), images[:1])
            runners[f"{fmt} qat/qad"] = bound_call(artifact_runner(qat, threads=2), images[:1])
        p50 = {name: [] for name in runners}
        for _ in range(rounds):
            for name, call in runners.items():
                for _ in range(200):
                    call()
                times = []
                for _ in range(calls):
                    began = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - began)
                p50[name].append(round(float(np.median(times)) * 1e3, 4))
    ratios = {}
    for fmt in ("onnx", "openvino"):
        per_round = [q / p for q, p in zip(p50[f"{fmt} qat/qad"], p50[f"{fmt} ptq"], strict=True)]
        ratios[fmt] = {
            "median": round(float(np.median(per_round)), 3),
            "range": [round(min(per_round), 3), round(max(per_round), 3)],
        }
    return {"p50_ms_per_round": p50, "qat_vs_ptq_p50": ratios, "rounds": rounds, "calls": calls}


def bound_call(runner, images: np.ndarray):
    runner.load()
    runner.prepare_batch(len(images))
    return runner.bind_inference(images).infer


def provenance() -> dict[str, Any]:
    """Which code ran where and when: a results file gathers measurements of several sessions and CPUs."""
    from budget_curve import source_commit  # the digits benchmarks' commit record (same folder)

    return {
        "code": source_commit(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "platform": platform.platform(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def add_interleaved_latency(path: Path) -> None:
    result = json.loads(path.read_text())
    measured = interleaved_latency()
    result["interleaved_latency"] = {
        **measured,
        **provenance(),
        "command": "python benchmarks/int8_recovery.py --interleaved-latency",
    }
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(measured["qat_vs_ptq_p50"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="quickstart_6,quickstart_30,specialize")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--add", action="store_true", help="add these configurations to the results file")
    parser.add_argument("--table", action="store_true", help="print the README table of the results file")
    parser.add_argument(
        "--interleaved-latency",
        action="store_true",
        help="time one MobileNetV2's PTQ and QAT INT8 artifacts interleaved; add it to the results file",
    )
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.results.read_text())))
        return
    if args.interleaved_latency:
        add_interleaved_latency(args.results)
        return
    from specialization import machine_record  # the digits benchmarks' shared record (same folder)

    seeds = [int(s) for s in args.seeds.split(",")]
    load_before = os.getloadavg()
    result = (
        json.loads(args.results.read_text())
        if args.add
        else {
            "benchmark": "int8 recovery: PTQ, accuracy-controlled PTQ, QAT and QAD of one FP32 student per seed",
            "seeds": seeds,
            "configs": {},
            "machine": machine_record(load_before),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
    )
    from edgekd.evaluation import environment

    result["environment"] = environment(None)
    for name in args.configs.split(","):
        result["configs"][name] = run_config(name, seeds)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=1) + "\n")  # after each config: keep what ran
    add = " --add" if args.add else ""
    result.setdefault("invocations", []).append(
        f"python benchmarks/int8_recovery.py{add} --configs {args.configs} --seeds {args.seeds} "
        f"(code {provenance()['code']})"
    )
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
