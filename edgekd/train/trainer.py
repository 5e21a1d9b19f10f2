"""The training loop of one stage: one objective (a Distiller), epoch by epoch, resumable from its last
completed epoch.

Every epoch reseeds torch from (seed, stage, epoch), so the data order and augmentation of an epoch do not
depend on what ran before it: a run resumed at epoch e repeats bit for bit what an uninterrupted run would
have done. The checkpoint of an epoch is written atomically once the epoch is complete, so a crash or Ctrl-C
loses at most the epoch in progress.

The selected epoch's state is the objective's whole state (the student and whatever the stage trains
beside it: a regressor, a fresh head), so the next stage of a plan starts from exactly what was selected.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.data import DataBundle
from edgekd.distill.base import Distiller
from edgekd.errors import TrainingDiverged
from edgekd.fileio import read_json, write_json
from edgekd.layout import StageFolder
from edgekd.recipe import TrainConfig
from edgekd.train.checkpoint import load_checkpoint, save_checkpoint
from edgekd.train.dist import is_main_process
from edgekd.train.optim import build_optimizer, build_scheduler

# Seeds of successive passes over the unlabelled images within one epoch (far from any other epoch's seed).
_ROUND_SEED_STEP = 7_777_777
# Seeds of a plan's later stages (stage 0 keeps the seeds of a one-stage run).
_STAGE_SEED_STEP = 104_729


@dataclass(frozen=True)
class FitResult:
    best_epoch: int
    best_val_acc: float
    epochs: int
    train_time_s: float
    history: list[dict[str, Any]]
    select: str = "best_val"
    best_score: float | None = None  # the stage metric at the selected epoch (select: metric)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochTally:
    """What an epoch's steps add up for its history row: loss terms (summed per image), accuracy counts."""

    sums: dict[str, float] = field(default_factory=dict)
    correct: int = 0
    seen: int = 0
    task_loss: float = 0.0


def epoch_seed(seed: int, epoch: int, stage: int = 0) -> int:
    return seed * 1_000_003 + epoch + stage * _STAGE_SEED_STEP


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device, class_index: Sequence[int] | None = None
) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy; `class_index` restricts the logits to those columns."""
    was_training = model.training
    model.eval()
    index = torch.as_tensor(list(class_index), device=device) if class_index is not None else None
    correct, total, loss_sum = 0, 0, 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        if index is not None:
            logits = logits.index_select(1, index)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    return 100.0 * correct / max(total, 1), loss_sum / max(total, 1)


class Trainer:
    def __init__(
        self,
        distiller: Distiller,
        data: DataBundle,
        cfg: TrainConfig,
        *,
        seed: int,
        out_dir: Path,
        device: torch.device,
        label: str,
        progress=None,
        select: str | None = None,
        stage_index: int = 0,
    ):
        self.distiller = distiller.to(device)
        self.select = select or cfg.select
        if self.select == "metric" and not distiller.has_selection_metric:
            raise ValueError(f"{type(distiller).__name__} defines no selection metric")
        self.stage_index = stage_index
        self.data = data
        self.cfg = cfg
        self.seed = seed
        self.files = StageFolder(Path(out_dir))
        self.device = device
        self.label = label
        self.progress = progress
        params = distiller.trainable_parameters()
        self.optimizer = build_optimizer(params, cfg.optimizer, distiller.learning_rate_factor())
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.epochs)
        self.history: list[dict[str, Any]] = []
        self.best_val_acc = -1.0
        self.best_val_loss = float("inf")
        self.best_score = float("-inf")
        self.best_epoch = -1
        self.steps_done = 0
        self.train_time_s = 0.0

    # ------------------------------------------------------------------------------------------ public
    def fit(self, resume: bool = False) -> FitResult:
        if resume and (self.files.done).is_file():
            return self._finished_result()
        start_epoch = self._restore() if resume else 0
        self.distiller.prepare_stage(self.data, self.device)
        task = self._start_progress(start_epoch)
        for epoch in range(start_epoch, self.cfg.epochs):
            row = self._run_epoch(epoch, task)
            self._end_epoch(epoch, row)
        result = FitResult(
            self.best_epoch,
            self.best_val_acc,
            self.cfg.epochs,
            self.train_time_s,
            self.history,
            self.select,
            self.best_score if self.select == "metric" else None,
        )
        if is_main_process():
            write_json(self.files.done, {k: v for k, v in result.to_dict().items() if k != "history"})
        self.load_best_student()
        return result

    def load_best_student(self) -> None:
        """The selected epoch's student (and the parts the stage trained beside it)."""
        state = load_checkpoint(self.files.best, f"{self.label} best checkpoint")
        self.distiller.load_state_dict(state)

    # ------------------------------------------------------------------------------------------ epochs
    def _run_epoch(self, epoch: int, task) -> dict[str, Any]:
        seed = epoch_seed(self.seed, epoch, self.stage_index)
        torch.manual_seed(seed)
        self.distiller.on_epoch_start(epoch, self.cfg.epochs)
        self.distiller.train()
        started = time.perf_counter()
        tally = EpochTally()
        unlabeled = self._unlabeled_batches(seed)
        for images, labels in self.data.train_loader(seed):
            self.train_step(images, labels, unlabeled, epoch, tally)
            if task is not None:
                self.progress.advance(task)
        sums, correct, seen, task_loss = tally.sums, tally.correct, tally.seen, tally.task_loss
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        val_acc, val_loss = evaluate(self.distiller.student, self.data.eval_loader("val"), self.device)
        score = self.distiller.selection_metric(self.data, self.device) if self.select == "metric" else None
        self.train_time_s += time.perf_counter() - started
        row = {"epoch": epoch + 1, "lr": lr, **{f"train_{k}": v / seen for k, v in sums.items()}}
        row.update(
            train_task_loss=task_loss / seen,
            train_acc=100.0 * correct / seen,
            val_acc=val_acc,
            val_loss=val_loss,
            epoch_time_s=time.perf_counter() - started,
        )
        if score is not None:
            row[f"val_{self.distiller.selection_metric_name}"] = score
        if task is not None:
            self.progress.update(task, description=self._describe(epoch + 1, val_acc))
        return row

    def train_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        unlabeled: Iterator[torch.Tensor] | None,
        epoch: int,
        tally: EpochTally,
    ) -> None:
        """One optimisation step of the stage's objective on a labelled batch (and the next unlabelled one,
        for methods with label-free terms), counted into ``tally`` (benchmarks/train_step.py times it)."""
        images, labels = images.to(self.device), labels.to(self.device)
        self.distiller.on_step_start(self.steps_done, self.data.steps_per_epoch * self.cfg.epochs)
        self.distiller.before_step(images, labels, self.optimizer)
        logits, terms = self.distiller.forward_train(images, labels)
        if unlabeled is not None:
            extra = self.distiller.label_free_terms(next(unlabeled).to(self.device))
            terms.update({f"{name}_unlabeled": value for name, value in extra.items()})
        loss = self._step(terms, epoch)
        batch = labels.numel()
        # The unweighted cross-entropy, comparable across methods (a method's own CE term may be scaled).
        tally.task_loss += F.cross_entropy(logits.detach(), labels, reduction="sum").item()
        for name, value in {"loss": loss, **terms}.items():
            tally.sums[name] = tally.sums.get(name, 0.0) + value.detach().item() * batch
        tally.correct += (logits.detach().argmax(1) == labels).sum().item()
        tally.seen += batch
        self.steps_done += 1

    def _unlabeled_batches(self, seed: int) -> Iterator[torch.Tensor] | None:
        """One unlabelled batch per labelled step, for methods with label-free terms (None otherwise).

        The labelled set sets the epoch's length; the unlabelled one is usually larger, so each epoch starts
        a fresh shuffle of it (seeded by the epoch, so a resumed run draws the same batches) and starts
        another if the epoch outlasts it.
        """
        if self.data.unlabeled is None or not self.distiller.learns_from_unlabeled:
            return None

        def batches() -> Iterator[torch.Tensor]:
            for round_ in itertools.count():
                yield from self.data.unlabeled_loader(seed + _ROUND_SEED_STEP * round_)

        return batches()

    def _step(self, terms: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"train: the {self.label} loss became {loss.item()} in epoch {epoch + 1} "
                f"(terms: {', '.join(terms)}); lower train.optimizer.lr or set train.grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.distiller.trainable_parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss

    def _end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self._is_better(row):
            self.best_val_acc, self.best_val_loss, self.best_epoch = (
                row["val_acc"],
                row["val_loss"],
                epoch + 1,
            )
            if self.select == "metric":
                self.best_score = row[f"val_{self.distiller.selection_metric_name}"]
            if is_main_process():
                save_checkpoint(self.distiller.state_dict(), self.files.best)
        if is_main_process():
            write_json(self.files.history, self.history)
            save_checkpoint(self._state(epoch + 1), self.files.last)

    def _is_better(self, row: dict[str, Any]) -> bool:
        """Small validation splits tie often on accuracy; the validation loss breaks the tie."""
        if self.select == "last":
            return True
        if self.select == "metric":
            return row[f"val_{self.distiller.selection_metric_name}"] > self.best_score
        return (row["val_acc"], -row["val_loss"]) > (self.best_val_acc, -self.best_val_loss)

    # ------------------------------------------------------------------------------------------ resume
    def _state(self, epochs_done: int) -> dict[str, Any]:
        return {
            "epochs_done": epochs_done,
            "distiller": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_val_acc": self.best_val_acc,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "steps_done": self.steps_done,
            "train_time_s": self.train_time_s,
        }

    def _restore(self) -> int:
        """Continue after the last completed epoch, if one was saved; returns the epoch to start from."""
        path = self.files.last
        if not path.is_file():
            return 0
        state = load_checkpoint(path, f"{self.label} checkpoint")
        self.distiller.load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_val_acc, self.best_epoch = state["best_val_acc"], state["best_epoch"]
        self.best_val_loss = state["best_val_loss"]
        self.best_score, self.steps_done = state["best_score"], state["steps_done"]
        self.train_time_s = state["train_time_s"]
        self.history = read_json(self.files.history)[: state["epochs_done"]]
        return state["epochs_done"]

    def _finished_result(self) -> FitResult:
        done = read_json(self.files.done)
        self.load_best_student()
        return FitResult(history=read_json(self.files.history), **done)

    # ------------------------------------------------------------------------------------------ display
    def _start_progress(self, start_epoch: int):
        if self.progress is None or not is_main_process():
            return None
        batches = self.data.steps_per_epoch
        return self.progress.add_task(
            self._describe(start_epoch, None),
            total=batches * self.cfg.epochs,
            completed=batches * start_epoch,
        )

    def _describe(self, epoch: int, val_acc: float | None) -> str:
        acc = f"val {val_acc:5.1f}%" if val_acc is not None else ""
        return f"{self.label:<10} epoch {epoch:>3}/{self.cfg.epochs} {acc}"
