"""The distillation step against its floor: per method, the time of edgekd's real training step
(Trainer.train_step) against the least such a step can cost, its overhead broken down, and the KD step beside
the same step the way torchdistill runs it; every variant timed in the same run, interleaved round by round,
so a burst of load hits every variant alike.

CIFAR-size pair: wrn_40_2 teacher, wrn_16_2 student, 3×32×32 inputs (scikit-learn's digits resized to 32×32
in 3 channels stand in for CIFAR images: the step's cost depends on the shapes, not the pixels), SGD with
momentum. The batches are made once and sit on the device before timing (the data pipeline is not the step).

The overhead breakdown comes from nested variants of one method stage, each a separate copy built from the
same seed and timed in the same run:

    floor       student forward + cross-entropy + backward + SGD step, and the teacher's forward in
                inference mode: the least any teacher-student step costs
    taps        the floor with the method's feature taps: teacher and student run through the method's own
                hooks (FeatureCapture), the teacher under no_grad as the method runs it; CE on the logits
    connectors  taps, plus the method's connectors (OFD/SKD ``connectors``, FitNet's ``regressor``) applied to
                the student's tap features, forward and backward (through a zero-weighted mean) and stepped
    objective   the method's own forward_train (teacher work, connectors, loss terms), the sum of its terms,
                backward and the step over its trainable parameters, with its per-step hooks (on_step_start,
                before_step), without the Trainer
    step        Trainer.train_step: all of the above and the trainer's own work (device moves, autocast,
                the finiteness check, the tally of the loss terms and accuracy)

so that, from the medians: taps = taps − floor (hooks, no_grad instead of inference mode); connectors =
connectors − taps; loss terms = objective − (connectors, else taps, else floor) (the loss terms and the
method's other trainable parts, e.g. SRM's dictionaries); trainer = step − objective. A part a method does
not have is null and its time falls into the next one. Differences of medians carry the noise of both; a
part within noise can come out negative, and is reported as measured. A stage that does not train the whole
student (FitNet's hint, SRM's first two stages) says what share it trains: its floor still trains all of it.

torchdistill: its DistillationBox built from a config with its KDLoss, driven as its example training loop
drives it (benchmarks/torchdistill_kd.py says which parts are its own and which are re-written); the same
losses as edgekd's kd (checked on the first batch and recorded). Needs ``pip install edgekd[torchdistill]``.

On the CPU each step is timed alone (perf_counter). On CUDA every variant is warmed up first (cuDNN
autotuning on, as torchdistill's example sets it), then timed two ways per round: each step between two
torch.cuda.synchronize() calls (its latency), and a run of consecutive steps with one synchronize at the end
(ms per step when the host may run ahead of the GPU: where per-step host syncs, e.g. loss.item(), cost).
With TrainConfig's ``amp``/``channels_last`` (when this build has them), the floor and the kd step are also
timed in those precisions and layouts.

    python benchmarks/train_step.py [--device cpu|cuda] [--methods kd,at,...] [--batches 64,256]
        [--amp none,bf16] [--channels-last off,on] [--rounds R] [--steps S] [--warmup W]

Writes benchmarks/results/train_step.json (CPU) or train_step_gpu.json (CUDA); without a CUDA device,
``--device cuda`` prints why and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchdistill_kd import TorchdistillKD, installed_version  # benchmarks/ is on sys.path as a script

from edgekd.bench import environment_record
from edgekd.config.data import DataConfig
from edgekd.config.train import OptimizerConfig, TrainConfig
from edgekd.data import DataPlan
from edgekd.distill import DistillContext
from edgekd.distill.base import Distiller
from edgekd.distill.registry import get_method
from edgekd.models import count_params, create_model
from edgekd.train import Trainer
from edgekd.train.optim import build_optimizer
from edgekd.train.trainer import EpochTally

ROOT = Path(__file__).resolve().parents[1]
RESULTS = {
    "cpu": ROOT / "benchmarks" / "results" / "train_step.json",
    "cuda": ROOT / "benchmarks" / "results" / "train_step_gpu.json",
}
TEACHER, STUDENT, INPUT = "wrn_40_2", "wrn_16_2", (3, 32, 32)
DEFAULT_METHODS = "kd,at,ofd,skd,fitnet,rkd,srm"
# Methods are planned as for a 30-epoch run, so multi-stage methods show each of their stages.
PLAN_EPOCHS = 30
DISTINCT_BATCHES = 8
TARGET_KD_OVER_FLOOR = 1.10
TARGET_OVER_TORCHDISTILL = 1.0
OPTIMIZER = OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
Step = Callable[[torch.Tensor, torch.Tensor], None]
Batch = tuple[torch.Tensor, torch.Tensor]


# ------------------------------------------------------------------------------------------------ setup
@dataclass(frozen=True)
class Precision:
    """A TrainConfig's amp and channels_last (FP32 and NCHW: the breakdown's)."""

    amp: str | None = None
    channels_last: bool = False

    @property
    def label(self) -> str:
        return (self.amp or "fp32") + ("+nhwc" if self.channels_last else "")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def autocast(self, device: torch.device):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def train_fields(self) -> dict[str, Any]:
        """TrainConfig fields for this precision (only those it changes, so an older build takes FP32)."""
        fields: dict[str, Any] = {}
        if self.amp is not None:
            fields["amp"] = self.amp
        if self.channels_last:
            fields["channels_last"] = True
        return fields


BASE = Precision()


@dataclass
class Variant:
    name: str
    step: Step
    precision: Precision = BASE


@dataclass
class StageInfo:
    """What a method stage trains besides (and of) the student."""

    training_only_params: int
    student_share_trained: float
    parts: dict[str, str] = field(default_factory=dict)  # breakdown part -> variant name


def cuda_unavailable_reason() -> str | None:
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    try:
        torch.cuda.init()
    except Exception as error:  # the driver's own words
        return str(error).splitlines()[0]
    return f"torch.cuda.is_available() is False ({torch.cuda.device_count()} devices)"


def student_data(batch: int):
    config = DataConfig(dataset="digits", image_size=32, channels=3, batch_size=batch, last_batch="drop")
    return DataPlan(config, None).student(0)


def all_training_images(data) -> Batch:
    images, labels = zip(*data.train_loader(0), strict=True)
    return torch.cat(images), torch.cat(labels)


def fixed_batches(pool: Batch, batch: int, device: torch.device) -> list[Batch]:
    """DISTINCT_BATCHES seeded draws of ``batch`` images, on the device; the steps cycle through them."""
    images, labels = pool
    if len(images) < batch:
        raise SystemExit(f"only {len(images)} training images; ask for batches of at most that")
    generator = torch.Generator().manual_seed(0)
    drawn = [torch.randperm(len(images), generator=generator)[:batch] for _ in range(DISTINCT_BATCHES)]
    return [(images[i].to(device), labels[i].to(device)) for i in drawn]


def plan(method: str):
    """The method's stages that train (its checks left out) and its default options."""
    entry = get_method(method)
    options = entry.options()
    stages = [stage for stage in entry.plan(options, TrainConfig(epochs=PLAN_EPOCHS)) if not stage.branch]
    return stages, options


def build_objective(stage, stages, options, teacher: nn.Module, context: DistillContext) -> Distiller:
    """The stage's objective on a seeded student, with the artifacts it consumes from an (untrained) producer
    stage's objective: their shapes, not their values, set the step's cost."""
    torch.manual_seed(0)
    student = create_model(STUDENT, context.num_classes, INPUT[0])
    objective = stage.objective(student, teacher, options, context)
    for artifact in stage.consumes:
        if artifact.holds != "objective":
            continue  # a student's weights: its shapes are the seeded student's
        producer = next(s for s in stages if artifact in s.produces)
        payload = build_objective(producer, stages, options, teacher, context).artifact(artifact.name)
        objective.use_artifact(artifact.name, payload)
    return objective


def stage_info(objective: Distiller) -> tuple[int, float]:
    student_ids = {id(p) for p in objective.student.parameters()}
    trainable = objective.trainable_parameters()
    extra = sum(p.numel() for p in trainable if id(p) not in student_ids)
    of_student = sum(p.numel() for p in trainable if id(p) in student_ids)
    return extra, round(of_student / count_params(objective.student), 3)


def connectors_of(objective: Distiller) -> list[nn.Module]:
    """The method's trainable maps on the student's tap features, one per tap (FeatureDistiller's
    make_connectors: OFD/SKD ``connectors``, FitNet's ``regressor``); none for other methods."""
    found: list[nn.Module] = []
    for name in ("connectors", "regressor"):
        module = getattr(objective, name, None)
        if isinstance(module, nn.ModuleList):
            found.extend(module)
        elif isinstance(module, nn.Module):
            found.append(module)
    capture = getattr(objective, "student_capture", None)
    return found if capture is not None and len(found) == len(capture.taps) else []


def has_taps(objective: Distiller) -> bool:
    return hasattr(objective, "teacher_capture") and hasattr(objective, "student_capture")


# ------------------------------------------------------------------------------------------------ variants
def floor_step(teacher: nn.Module, classes: int, device: torch.device, precision: Precision) -> Step:
    """The least a KD step can cost: student forward + backward + step, teacher forward in inference mode."""
    torch.manual_seed(0)
    student = create_model(STUDENT, classes, INPUT[0]).to(device, memory_format=precision.memory_format)
    student.train()
    optimizer = build_optimizer(list(student.parameters()), OPTIMIZER, 1.0)
    scaler = torch.amp.GradScaler(device.type) if precision.amp == "fp16" else None
    memory_format = precision.memory_format

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        if precision.channels_last:
            images = images.to(memory_format=memory_format)
        with precision.autocast(device):
            with torch.inference_mode():
                teacher(images)
            loss = F.cross_entropy(student(images), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def trainer_step(
    objective: Distiller, data, device: torch.device, precision: Precision, folder: Path
) -> Step:
    trainer = Trainer(
        objective,
        data,
        TrainConfig(epochs=1, optimizer=OPTIMIZER, **precision.train_fields()),
        seed=0,
        out_dir=folder,
        device=device,
        label=folder.name,
    )
    objective.prepare_stage(data, device)  # lazily computed state (margins, centres) first, as fit() does
    objective.train()
    tally = EpochTally()
    return lambda images, labels: trainer.train_step(images, labels, None, 0, tally)


def objective_step(objective: Distiller, data, device: torch.device, first: Batch) -> Step:
    """The method's forward_train, backward and step, with its per-step hooks, without the Trainer."""
    objective.to(device)
    objective.prepare_stage(data, device)
    objective.train()
    prepare_first_batch = getattr(objective, "prepare_first_batch", None)  # not in every build
    if prepare_first_batch is not None:
        with torch.no_grad():
            prepare_first_batch(first[0])
    optimizer = build_optimizer(objective.trainable_parameters(), OPTIMIZER, objective.learning_rate_factor())
    steps = data.steps_per_epoch
    done = [0]

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        objective.on_step_start(done[0], steps)
        objective.before_step(images, labels, optimizer)
        _, terms = objective.forward_train(images, labels)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done[0] += 1

    return step


def taps_step(objective: Distiller, device: torch.device, with_connectors: bool) -> Step:
    """The floor run through the method's own taps (and its connectors on the student's tap features)."""
    objective.to(device)
    objective.train()
    connectors = connectors_of(objective) if with_connectors else []
    params = [*objective.student.parameters(), *(p for c in connectors for p in c.parameters())]
    optimizer = build_optimizer(params, OPTIMIZER, 1.0)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.no_grad():
            objective.teacher_capture.run(images)
        logits, features = objective.student_capture.run(images)
        loss = F.cross_entropy(logits, labels)
        if connectors:
            mapped = [
                connect(feature).float().mean() for connect, feature in zip(connectors, features, strict=True)
            ]
            loss = loss + 0.0 * sum(mapped)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def method_variants(
    method: str, teacher: nn.Module, data, context, device: torch.device, first: Batch, folder: Path
) -> tuple[list[Variant], dict[str, StageInfo]]:
    stages, options = plan(method)
    variants: list[Variant] = []
    infos: dict[str, StageInfo] = {}
    for stage in stages:
        label = method if len(stages) == 1 else f"{method}:{stage.name}"

        def make(stage=stage) -> Distiller:
            return build_objective(stage, stages, options, teacher, context)

        probe = make()
        info = StageInfo(*stage_info(probe))
        if has_taps(probe):
            info.parts["taps"] = f"{label}/taps"
            variants.append(Variant(f"{label}/taps", taps_step(make(), device, with_connectors=False)))
            if connectors_of(probe):
                info.parts["connectors"] = f"{label}/connectors"
                variants.append(
                    Variant(f"{label}/connectors", taps_step(make(), device, with_connectors=True))
                )
        info.parts["objective"] = f"{label}/objective"
        variants.append(Variant(f"{label}/objective", objective_step(make(), data, device, first)))
        info.parts["step"] = label
        step = trainer_step(make(), data, device, BASE, folder / label.replace(":", "-"))
        variants.append(Variant(label, step))
        infos[label] = info
    return variants, infos


def torchdistill_variants(
    teacher: nn.Module, pool: Batch, batch: int, device: torch.device, first: Batch, context, data
) -> tuple[list[Variant], dict[str, Any]]:
    """torchdistill's KD step (its sample config's wrappers; on CUDA also without them) and a check that its
    loss on the first batch equals edgekd's kd loss from the same initial weights."""
    kd_options = get_method("kd").options()
    dataset = torch.utils.data.TensorDataset(*pool)
    optimizer = {
        "lr": OPTIMIZER.lr,
        "momentum": OPTIMIZER.momentum,
        "weight_decay": OPTIMIZER.weight_decay,
        "nesterov": OPTIMIZER.nesterov,
    }
    wraps = [("torchdistill", True)] + ([("torchdistill/no-wrapper", False)] if device.type == "cuda" else [])
    variants, boxes = [], {}
    for name, wrap in wraps:
        torch.manual_seed(0)
        student = create_model(STUDENT, context.num_classes, INPUT[0])
        boxes[name] = TorchdistillKD(
            teacher,
            student,
            dataset,
            batch=batch,
            device=device,
            optimizer=optimizer,
            temperature=kd_options.temperature,
            kd_alpha=kd_options.alpha,
            wrap=wrap,
        )
        variants.append(Variant(name, boxes[name].step))
    stages, options = plan("kd")
    reference = build_objective(stages[0], stages, options, teacher, context).to(device).train()
    images, labels = first
    with torch.no_grad():
        edgekd_loss = float(sum(reference.forward_train(images, labels)[1].values()))
        torchdistill_loss = float(boxes["torchdistill"].loss(images, labels))
    check = {
        "edgekd_kd_loss": round(edgekd_loss, 6),
        "torchdistill_loss": round(torchdistill_loss, 6),
        "abs_difference": abs(edgekd_loss - torchdistill_loss),
        "what": "the loss of both steps on the first batch from the same seeded student, before any step",
    }
    return variants, check


# ------------------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(
    variants: list[Variant], batches: list[Batch], rounds: int, steps: int, warmup: int, device: torch.device
) -> dict[str, dict[str, list[float]]]:
    """Per variant: each step's ms (synchronized on CUDA) and, on CUDA, each round's ms per step of `steps`
    consecutive steps with one synchronize at the end. Variants interleave round by round."""
    for variant in variants:
        for index in range(warmup):
            variant.step(*batches[index % len(batches)])
        synchronize(device)
    times: dict[str, dict[str, list[float]]] = {v.name: {"synced": [], "pipelined": []} for v in variants}
    for _ in range(rounds):
        for variant in variants:
            for index in range(steps):
                images, labels = batches[index % len(batches)]
                synchronize(device)
                started = time.perf_counter()
                variant.step(images, labels)
                synchronize(device)
                times[variant.name]["synced"].append((time.perf_counter() - started) * 1e3)
            if device.type == "cuda":
                synchronize(device)
                started = time.perf_counter()
                for index in range(steps):
                    variant.step(*batches[index % len(batches)])
                synchronize(device)
                times[variant.name]["pipelined"].append((time.perf_counter() - started) * 1e3 / steps)
    return times


def spread(values: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {
        "median_ms": round(statistics.median(values), 3),
        "min_ms": round(min(values), 3),
        "q1_ms": round(quartiles[0], 3),
        "q3_ms": round(quartiles[2], 3),
        "max_ms": round(max(values), 3),
    }


def rows_of(times, variants: list[Variant], infos: dict[str, StageInfo]) -> dict[str, dict[str, Any]]:
    floors = {v.precision: v.name for v in variants if v.name.startswith("floor")}
    rows = {}
    for variant in variants:
        synced = times[variant.name]["synced"]
        floor = times[floors[variant.precision]]
        row: dict[str, Any] = {"precision": variant.precision.label, **spread(synced), "steps": len(synced)}
        row["over_floor"] = round(statistics.median(synced) / statistics.median(floor["synced"]), 3)
        row["overhead_ms"] = round(statistics.median(synced) - statistics.median(floor["synced"]), 3)
        pipelined = times[variant.name]["pipelined"]
        if pipelined:
            row["pipelined_ms"] = round(statistics.median(pipelined), 3)
            row["pipelined_min_ms"] = round(min(pipelined), 3)
            row["pipelined_over_floor"] = round(
                statistics.median(pipelined) / statistics.median(floor["pipelined"]), 3
            )
        if variant.name in infos:
            row["training_only_params"] = infos[variant.name].training_only_params
            row["student_share_trained"] = infos[variant.name].student_share_trained
        rows[variant.name] = row
    return rows


def breakdown(times, infos: dict[str, StageInfo], mode: str) -> dict[str, dict[str, Any]]:
    """Per method stage: its step, floor and ratio, and the parts (ms) that add up to the step."""
    median = {name: statistics.median(t[mode]) for name, t in times.items() if t[mode]}
    floor = median["floor"]
    result = {}
    for label, info in infos.items():
        parts: dict[str, float | None] = {"floor": round(floor, 3)}
        below = floor
        for part in ("taps", "connectors"):
            name = info.parts.get(part)
            parts[part] = round(median[name] - below, 3) if name else None
            below = median[name] if name else below
        parts["loss_terms"] = round(median[info.parts["objective"]] - below, 3)
        parts["trainer"] = round(median[label] - median[info.parts["objective"]], 3)
        result[label] = {
            "step_ms": round(median[label], 3),
            "floor_ms": round(floor, 3),
            "over_floor": round(median[label] / floor, 3),
            "parts_ms": parts,
            "training_only_params": info.training_only_params,
            "student_share_trained": info.student_share_trained,
        }
    return result


# ------------------------------------------------------------------------------------------------ main
def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def precisions_of(args, device: torch.device) -> tuple[list[Precision], list[str]]:
    """The precisions besides FP32/NCHW to time the floor and kd step in, and notes on any left out."""
    on_cuda = device.type == "cuda"
    amps = [None if a == "none" else a for a in parse_list(args.amp or ("none,bf16" if on_cuda else "none"))]
    layouts = [v == "on" for v in parse_list(args.channels_last or ("off,on" if on_cuda else "off"))]
    notes = []
    fields = TrainConfig.model_fields
    if any(amps) and "amp" not in fields:
        notes.append("amp variants not measured: this build's TrainConfig has no `amp` field")
        amps = [None]
    if any(layouts) and "channels_last" not in fields:
        notes.append(
            "channels_last variants not measured: this build's TrainConfig has no `channels_last` field"
        )
        layouts = [False]
    chosen = [Precision(a, c) for a in dict.fromkeys(amps) for c in dict.fromkeys(layouts)]
    return [p for p in chosen if p != BASE], notes


def measure_batch(args, batch: int, device: torch.device, teacher: nn.Module, precisions, folder: Path):
    data = student_data(batch)
    pool = all_training_images(data)
    batches = fixed_batches(pool, batch, device)
    context = DistillContext(data.num_classes, tuple(range(data.num_classes)), input_shape=INPUT)
    variants = [Variant("floor", floor_step(teacher, data.num_classes, device, BASE))]
    infos: dict[str, StageInfo] = {}
    for method in parse_list(args.methods):
        found, stage_infos = method_variants(
            method, teacher, data, context, device, batches[0], folder / str(batch)
        )
        variants += found
        infos.update(stage_infos)
    teachers = {False: teacher}
    for precision in precisions:
        if precision.channels_last not in teachers:
            # the Trainer converts its teacher in place: each layout gets its own copy
            teachers[True] = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
        layout_teacher = teachers[precision.channels_last]
        tag = f"@{precision.label}"
        variants.append(
            Variant(f"floor{tag}", floor_step(layout_teacher, data.num_classes, device, precision), precision)
        )
        stages, options = plan("kd")
        objective = build_objective(stages[0], stages, options, layout_teacher, context)
        step = trainer_step(objective, data, device, precision, folder / str(batch) / f"kd{tag}")
        variants.append(Variant(f"kd{tag}", step, precision))
    check: dict[str, Any] | str
    if installed_version() is not None:
        found, check = torchdistill_variants(teacher, pool, batch, device, batches[0], context, data)
        variants += found
    else:
        check = "not measured: torchdistill is not installed (pip install edgekd[torchdistill])"
    times = time_variants(variants, batches, args.rounds, args.steps, args.warmup, device)
    rows = rows_of(times, variants, infos)
    result: dict[str, Any] = {"steps": rows, "breakdown": breakdown(times, infos, "synced")}
    if device.type == "cuda":
        result["breakdown_pipelined"] = breakdown(times, infos, "pipelined")
    result["torchdistill"] = torchdistill_summary(rows, check)
    return result


def torchdistill_summary(rows: dict[str, dict[str, Any]], check) -> dict[str, Any] | str:
    if isinstance(check, str) or "kd" not in rows:
        return check if isinstance(check, str) else "not measured: kd is not among --methods"
    summary: dict[str, Any] = {"loss_check": check}
    for name in ("torchdistill", "torchdistill/no-wrapper"):
        if name not in rows:
            continue
        entry = {"edgekd_kd_over_it": round(rows["kd"]["median_ms"] / rows[name]["median_ms"], 3)}
        if "pipelined_ms" in rows[name]:
            entry["edgekd_kd_over_it_pipelined"] = round(
                rows["kd"]["pipelined_ms"] / rows[name]["pipelined_ms"], 3
            )
        summary[name] = entry
    return summary


def targets(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kd_over_floor_at_most": TARGET_KD_OVER_FLOOR,
        "edgekd_over_torchdistill_at_most": TARGET_OVER_TORCHDISTILL,
    }
    for key, result in results.items():
        rows = result["steps"]
        if "kd" not in rows:
            continue
        kd = {"over_floor": rows["kd"]["over_floor"], "met": rows["kd"]["over_floor"] <= TARGET_KD_OVER_FLOOR}
        if "pipelined_over_floor" in rows["kd"]:
            kd["pipelined_over_floor"] = rows["kd"]["pipelined_over_floor"]
            kd["pipelined_met"] = kd["pipelined_over_floor"] <= TARGET_KD_OVER_FLOOR
        entry: dict[str, Any] = {"kd": kd}
        summary = result["torchdistill"]
        if isinstance(summary, dict):
            # against the faster of torchdistill's variants (with and without its wrappers)
            ratios = [v for k, v in summary.items() if k.startswith("torchdistill")]
            worst = {
                mode: max(r[mode] for r in ratios) for mode in ratios[0] if all(mode in r for r in ratios)
            }
            entry["edgekd_over_torchdistill"] = worst
            entry["torchdistill_met"] = all(v <= TARGET_OVER_TORCHDISTILL for v in worst.values())
        out[key] = entry
    return out


def print_result(key: str, result: dict[str, Any]) -> None:
    print(f"-- {key}")
    for name, row in result["steps"].items():
        line = f"{name:>26}: {row['median_ms']:9.2f} ms  [{row['q1_ms']:.2f}, {row['q3_ms']:.2f}]"
        line += f"  x{row['over_floor']:.3f}"
        if "pipelined_ms" in row:
            line += f"  | pipelined {row['pipelined_ms']:8.2f} ms  x{row['pipelined_over_floor']:.3f}"
        print(line)
    for label, entry in result["breakdown"].items():
        parts = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in entry["parts_ms"].items())
        print(f"{label:>26}: {entry['step_ms']:.2f} ms = {parts}")
    print(f"{'torchdistill':>26}: {json.dumps(result['torchdistill'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--batches", help="Batch sizes (default: 64 on the CPU, 64,256 on CUDA).")
    parser.add_argument("--amp", help="none,bf16,fp16 (default: none on the CPU, none,bf16 on CUDA).")
    parser.add_argument("--channels-last", help="off,on (default: off on the CPU, off,on on CUDA).")
    parser.add_argument("--rounds", type=int, help="Interleaved rounds (default: 5).")
    parser.add_argument(
        "--steps", type=int, help="Timed steps per variant and round (default: 5 CPU, 10 CUDA)."
    )
    parser.add_argument(
        "--warmup", type=int, help="Untimed steps per variant first (default: 2 CPU, 10 CUDA)."
    )
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU threads.")
    parser.add_argument(
        "--out", type=Path, help="Results file (default: benchmarks/results/train_step[_gpu].json)."
    )
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and (reason := cuda_unavailable_reason()) is not None:
        print(f"not measured: no CUDA device ({reason})")
        return
    args.rounds = args.rounds or 5
    args.steps = args.steps or (10 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True  # as torchdistill's example (and edgekd's mode: speed) run
    else:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    precisions, notes = precisions_of(args, device)
    torch.manual_seed(1)
    teacher = create_model(TEACHER, 10, INPUT[0]).eval().to(device)
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgekd-train-step-") as folder:
        for batch in [int(b) for b in parse_list(args.batches or ("64,256" if cuda else "64"))]:
            results[f"batch_{batch}"] = measure_batch(args, batch, device, teacher, precisions, Path(folder))
            print_result(f"batch {batch}", results[f"batch_{batch}"])
    here, other = ("gpu", "cpu") if cuda else ("cpu", "gpu")
    result = {
        "benchmark": "distillation step against its floor (student fwd+bwd+step + teacher no-grad forward), "
        "its overhead broken down, and the KD step beside torchdistill's",
        "command": " ".join(["python benchmarks/train_step.py", *shown_arguments(sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "environment": environment_record(torch.get_num_threads()).to_dict(),
        "libraries": {
            "torch": torch.__version__,
            "torchdistill": installed_version(),
            "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
        },
        "device": device_record(device),
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "teacher": TEACHER,
            "student": STUDENT,
            "input": list(INPUT),
            "optimizer": OPTIMIZER.model_dump(),
            "methods": parse_list(args.methods),
            "plan_epochs": PLAN_EPOCHS,
            "precisions_besides_fp32": [p.label for p in precisions],
            "precision_notes": notes,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "warmup_steps": args.warmup,
            "distinct_batches": DISTINCT_BATCHES,
            "batches": "drawn once from the training images and placed on the device before timing",
            "step": "Trainer.train_step, the build's own step (no unlabelled stream)",
            "floor": "student forward + cross-entropy + backward + SGD step, teacher forward in inference_mode",
            "median": "over rounds x steps; variants interleaved round by round",
            "pipelined": "CUDA only: per round, ms per step of steps_per_round consecutive steps, one "
            "synchronize at the end",
            "breakdown": "see the module docstring of benchmarks/train_step.py",
        },
        here: results,
        other: not_measured_here(other),
        "targets": targets(results),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    path = args.out or RESULTS[args.device]
    path.write_text(json.dumps(result, indent=2) + "\n")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"written {shown} ({result['wall_s']:.0f} s)")


def shown_arguments(arguments: list[str]) -> list[str]:
    """The command's arguments without --out (where this copy of the file was written is not the run)."""
    shown, skip = [], False
    for argument in arguments:
        if skip or argument.startswith("--out="):
            skip = False
            continue
        if argument == "--out":
            skip = True
            continue
        shown.append(argument)
    return shown


def device_record(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"type": "cpu", "threads": torch.get_num_threads()}
    properties = torch.cuda.get_device_properties(device)
    return {
        "type": "cuda",
        "name": properties.name,
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "multiprocessors": properties.multi_processor_count,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def not_measured_here(other: str) -> str:
    if other == "cpu":
        return "measured separately: benchmarks/results/train_step.json"
    reason = cuda_unavailable_reason()
    if reason is None:
        return "not measured in this run: python benchmarks/train_step.py --device cuda writes train_step_gpu.json"
    return f"not measured: no GPU on this machine ({reason}); --device cuda writes train_step_gpu.json where one is"


if __name__ == "__main__":
    main()
