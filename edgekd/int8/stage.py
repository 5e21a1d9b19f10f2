"""The quantization-aware stage: after a method's plan selected its student, that student is PTQ-calibrated
by NNCF (edgekd.int8.fake_quant) and fine-tuned with simulated INT8 for ``export.int8.epochs``, on
cross-entropy (QAT) or on KD against the frozen teacher (QAD), and the epoch kept is chosen on the
validation split, as every stage's is.

It runs through the trainer like any stage (its folder under the method's, resumable from its last complete
epoch, bit for bit, its own seed index), with a fine-tuning schedule: the recipe's optimizer at
``export.int8.lr`` (default: the recipe's rate / 100), cosine to zero, no warm-up, FP32 steps (simulated
INT8 under autocast would quantize bf16 values), contiguous memory. If no epoch beats the calibrated start
on validation, the start is kept and the record says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.config.deploy import QUANTIZATION_AWARE, Int8Config
from edgekd.config.train import ScheduleConfig, TrainConfig
from edgekd.data import DataBundle
from edgekd.distill.base import DistillContext, Distiller
from edgekd.int8.fake_quant import FakeQuantized, fake_quantize
from edgekd.int8.objective import (
    QuantizationAwareDistillation,
    QuantizationAwareOptions,
    QuantizationAwareTraining,
)
from edgekd.seeds import INT8_STAGE_SEED_INDEX
from edgekd.train.trainer import FitResult, Trainer, evaluate

# Where a method has no KD settings of its own (scratch, REFILLED, ...): the KD paper's and edgekd's defaults.
DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.9
LR_DIVISOR = 100  # default stage rate: the recipe's / 100, fine-tuning a trained student


@dataclass(frozen=True)
class QuantizationAwareResult:
    """The fine-tuned fake-quantized student and the stage's record (epochs, what was kept, settings)."""

    fake_quantized: FakeQuantized
    record: dict[str, Any]
    history: list[dict[str, Any]]


def stage_settings(int8: Int8Config, method_options: Any) -> QuantizationAwareOptions:
    """QAD's temperature and alpha: export.int8's, else the method's own, else the KD defaults."""
    temperature = int8.temperature or getattr(method_options, "temperature", None) or DEFAULT_TEMPERATURE
    alpha = int8.alpha if int8.alpha is not None else getattr(method_options, "alpha", None)
    return QuantizationAwareOptions(
        temperature=float(temperature), alpha=float(DEFAULT_ALPHA if alpha is None else alpha)
    )


def stage_train_config(train: TrainConfig, int8: Int8Config) -> TrainConfig:
    lr = int8.lr if int8.lr is not None else train.optimizer.lr / LR_DIVISOR
    return train.model_copy(
        update={
            "epochs": int8.epochs,
            "optimizer": train.optimizer.model_copy(update={"lr": lr}),
            "schedule": ScheduleConfig(name="cosine"),
            "select": "best_val",
            "amp": None,
            # NNCF's hooks are traced on a contiguous model; channels-last only speeds GPU convolutions
            "channels_last": False,
        }
    )


@dataclass(frozen=True)
class FineTune:
    """What a fine-tuning run kept: the trainer's result, the start's validation accuracy, and whether no
    epoch beat the start (the model is then back at its start)."""

    fit: FitResult
    start_val_acc: float
    kept_start: bool


def stage_objective(
    mode: str,
    model: nn.Module,
    teacher: nn.Module | None,
    options: QuantizationAwareOptions,
    context: DistillContext,
) -> Distiller:
    """The stage's objective for `model`: QAD against the teacher, or QAT on the labels (no teacher)."""
    if mode == "qad":
        return QuantizationAwareDistillation(model, teacher, options, context)
    return QuantizationAwareTraining(model, None, options, context)


def fine_tune(
    objective: Distiller,
    data: DataBundle,
    cfg: TrainConfig,
    *,
    seed: int,
    out_dir,
    device: torch.device,
    label: str,
    resume: bool = False,
    progress=None,
) -> FineTune:
    """Train `objective.student` from where it is with `cfg` (the stage's seed index, selected on
    validation); if no epoch beats the start on validation, the start is kept (ties go to the trained one)."""
    model = objective.student
    start_val_acc = evaluate(model.to(device), data.eval_loader("val"), device)[0]
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        objective,
        data,
        cfg,
        seed=seed,
        out_dir=out_dir,
        device=device,
        label=label,
        progress=progress,
        select="best_val",
        stage_index=INT8_STAGE_SEED_INDEX,
    )
    fit = trainer.fit(resume=resume)
    kept_start = fit.best_val_acc < start_val_acc
    if kept_start:
        model.load_state_dict(start_state)
    return FineTune(fit, start_val_acc, kept_start)


def train_quantization_aware(
    mode: str,
    student: nn.Module,
    teacher: nn.Module | None,
    data: DataBundle,
    train: TrainConfig,
    int8: Int8Config,
    method_options: Any,
    context: DistillContext,
    calibration: np.ndarray,
    *,
    seed: int,
    out_dir,
    device: torch.device,
    label: str,
    resume: bool,
    progress=None,
) -> QuantizationAwareResult:
    """Calibrate, fine-tune (mode 'qat' or 'qad') and select; the student given is left untouched."""
    if mode not in QUANTIZATION_AWARE:
        raise ValueError(f"mode: {mode!r}; a quantization-aware stage is 'qat' or 'qad'")
    fake = fake_quantize(student, calibration)
    options = stage_settings(int8, method_options)
    objective = stage_objective(mode, fake.model, teacher, options, context)
    cfg = stage_train_config(train, int8)
    tuned = fine_tune(
        objective,
        data,
        cfg,
        seed=seed,
        out_dir=out_dir,
        device=device,
        label=f"{label} int8 {mode}",
        resume=resume,
        progress=progress,
    )
    fit = tuned.fit
    record = {
        "mode": mode,
        "epochs": cfg.epochs,
        "lr": cfg.optimizer.lr,
        "optimizer": cfg.optimizer.name,
        "schedule": "cosine",
        **({"temperature": options.temperature, "alpha": options.alpha} if mode == "qad" else {}),
        # what the stage read: the student's own labelled images (and unlabelled ones, for QAD's KD term)
        "labelled_images": {"train": len(data.train), "selection": len(data.val)},
        "unlabeled_images": len(data.unlabeled) if mode == "qad" and data.unlabeled is not None else 0,
        "start_val_acc": round(tuned.start_val_acc, 4),
        "best_epoch": fit.best_epoch,
        "best_val_acc": round(fit.best_val_acc, 4),
        "kept": "the calibrated start (no epoch beat it on validation)"
        if tuned.kept_start
        else f"epoch {fit.best_epoch}",
        "val_acc": round(max(fit.best_val_acc, tuned.start_val_acc), 4),
        "train_time_s": round(fit.train_time_s, 2),
        "quantization": fake.describe(),
    }
    return QuantizationAwareResult(replace(fake, model=fake.model.to("cpu").eval()), record, fit.history)
