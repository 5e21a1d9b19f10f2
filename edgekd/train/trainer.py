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

import contextlib
import gc
import itertools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config.train import TrainConfig
from edgekd.data import DataBundle
from edgekd.data.bundle import close_loader
from edgekd.distill.base import Distiller
from edgekd.errors import EdgekdError, TrainingDiverged
from edgekd.fileio import read_json, write_json
from edgekd.layout import StageFolder
from edgekd.seeds import augmentation_seed, epoch_seed, unlabeled_round_seed
from edgekd.train.checkpoint import load_checkpoint, save_checkpoint
from edgekd.train.dist import Parallel, is_main_process
from edgekd.train.optim import build_optimizer, build_scheduler
from edgekd.train.syncbn import global_batchnorm_in_place

# Steps between checks that the loss is still finite: each check waits for the GPU, so not every step.
_FINITE_CHECK_EVERY = 50
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    """What an epoch's steps add up for its history row: loss terms (summed per image), accuracy counts.

    The sums stay on the training device as tensors: adding to them does not wait for the GPU, so a step
    never syncs with the host for its bookkeeping; :meth:`totals` reads them once, at the end of the epoch
    (summed over the processes of a data-parallel run)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: torch.Tensor | int = 0
    seen: int = 0
    task_loss: torch.Tensor | float = 0.0

    def add(self, terms: dict[str, torch.Tensor], batch: int) -> None:
        for name, value in terms.items():
            weighted = value.detach().double() * batch
            self.sums[name] = self.sums[name] + weighted if name in self.sums else weighted

    def totals(self, parallel: Parallel | None = None) -> tuple[dict[str, float], int, int, float]:
        """(loss sums, correct, seen, task-loss sum) as numbers: one transfer from the device."""
        names = list(self.sums)
        values = [self.sums[n].reshape(()) for n in names]
        device = values[0].device if values else torch.device("cpu")
        counts = (self.correct, self.seen, self.task_loss)
        extra = [torch.as_tensor(x, dtype=torch.float64, device=device).reshape(()) for x in counts]
        packed = torch.stack([v.double() for v in values] + extra)
        if parallel is not None:
            parallel.all_reduce_sum(packed)
        numbers = packed.tolist()
        sums = dict(zip(names, numbers[: len(names)], strict=True))
        correct, seen, task_loss = numbers[len(names) :]
        return sums, round(correct), round(seen), task_loss


@contextlib.contextmanager
def frozen(parameters: list[nn.Parameter]) -> Iterator[None]:
    """`parameters` require no gradient for the block, and do again after it."""
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


def evaluate(
    model: nn.Module, loader, device: torch.device, class_index: Sequence[int] | None = None
) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy; `class_index` restricts the logits to those columns."""
    return accuracy_and_loss(evaluation_counts(model, loader, device, class_index))


def accuracy_and_loss(counts: torch.Tensor) -> tuple[float, float]:
    correct, total, loss_sum = counts.tolist()
    return 100.0 * correct / max(total, 1), loss_sum / max(total, 1)


@torch.no_grad()
def evaluation_counts(
    model: nn.Module, loader, device: torch.device, class_index: Sequence[int] | None = None
) -> torch.Tensor:
    """(correct, images, summed cross-entropy) as one float64 tensor on `device`, accumulated there: the
    host reads it once (and a data-parallel run sums it over its processes' shards)."""
    was_training = model.training
    model.eval()
    index = torch.as_tensor(list(class_index), device=device) if class_index is not None else None
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        if index is not None:
            logits = logits.index_select(1, index)
        counts[0] += (logits.argmax(1) == labels).sum()
        counts[1] += labels.numel()
        counts[2] += F.cross_entropy(logits.float(), labels, reduction="sum")
    model.train(was_training)
    return counts


class StepObjective(nn.Module):
    """A step's whole loss as one forward: the labelled terms and, given unlabelled images, the label-free
    ones. It is the module DDP wraps, so DDP's gradient hooks see every use of the trained weights in the
    step (a second forward outside it would escape them)."""

    def __init__(self, distiller: Distiller):
        super().__init__()
        self.distiller = distiller

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, unlabeled: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, terms = self.distiller.forward_train(images, labels)
        if unlabeled is not None:
            extra = self.distiller.label_free_terms(unlabeled)
            terms.update({f"{name}_unlabeled": value for name, value in extra.items()})
        return logits, terms


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
        parallel: Parallel | None = None,
    ):
        if parallel is not None and distiller.not_data_parallel:
            # prepare.check_data_parallel refuses such a build before anything trains; a library caller
            # gets this
            raise EdgekdError(
                f"distributed: the {label} stage ({type(distiller).__name__}) cannot train data-parallel: it "
                f"{distiller.not_data_parallel}; run it with one process (edgekd build without --nproc)"
            )
        self.parallel = parallel
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.memory_format = memory_format
        self.distiller = distiller.to(device, memory_format=memory_format)
        if distiller.teacher is not None and cfg.channels_last:
            distiller.teacher.to(memory_format=memory_format)
        # What a step calls: the objective; under DDP, fit wraps it for the stage (data_parallel_steps).
        self.model: nn.Module = StepObjective(distiller)
        self.select = select or cfg.select
        if self.select == "metric" and not distiller.has_selection_metric:
            raise ValueError(f"{type(distiller).__name__} defines no selection metric")
        self.stage_index = stage_index
        pin = data.pin_memory if data.pin_memory is not None else device.type == "cuda"
        self.data = replace(data, pin_memory=pin)
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
        self._stage_loaders: dict[str, Any] = {}
        self.amp_dtype = _AMP_DTYPES.get(cfg.amp) if cfg.amp else None
        # fp16 needs a loss scale (its small gradients underflow); bf16 has FP32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    @contextlib.contextmanager
    def _data_parallel_steps(self) -> Iterator[None]:
        """Under DDP, the stage's steps call the objective wrapped in DistributedDataParallel over exactly the
        parameters the stage trains (its `trainable_parameters`).

        An objective holds parameters its stage does not train: the student's layers after a hint tap, its
        classifier in an embedding stage, a frozen dictionary, a dropped pathway's transform. Their gradients
        are never used (the optimizer does not hold them), but DDP would wait for them and fail. They are
        frozen while the stage trains, so DDP leaves them out, and made trainable again after it, for the
        next stage. With distributed.sync_batchnorm the BatchNorm layers the objective builds beside the
        student (connectors, transforms; the student's own are synchronized for the whole plan) compute their
        statistics over the global batch too. So the trained parameters' gradients are one process's."""
        if self.parallel is None:
            yield
            return
        with contextlib.ExitStack() as stack:
            stack.enter_context(frozen(self._idle_parameters()))
            if self.parallel.sync_batchnorm:
                stack.enter_context(global_batchnorm_in_place(self.distiller))
            stack.enter_context(self._wrapped_in_ddp())
            yield

    @contextlib.contextmanager
    def _wrapped_in_ddp(self) -> Iterator[None]:
        """Steps call the objective in DistributedDataParallel for the block (the teacher is not a submodule
        of the objective, so DDP neither wraps nor broadcasts it)."""
        from torch.nn.parallel import DistributedDataParallel

        step = self.model
        self.model = DistributedDataParallel(
            step,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.distiller.unused_parameters,
        )
        try:
            yield
        finally:
            # The wrapper sits in reference cycles: collected now, its gradient hooks leave the parameters
            # before another stage's wrapper adds its own.
            self.model = step
            gc.collect()

    def _idle_parameters(self) -> list[nn.Parameter]:
        """The objective's parameters that require a gradient but that its stage does not train."""
        trained = {id(p) for p in self.distiller.trainable_parameters()}
        return [p for p in self.distiller.parameters() if p.requires_grad and id(p) not in trained]

    def _shard(self) -> tuple[int, int] | None:
        return (self.parallel.rank, self.parallel.world) if self.parallel is not None else None

    # ------------------------------------------------------------------------------------------ public
    def fit(self, resume: bool = False) -> FitResult:
        if resume and (self.files.done).is_file():
            return self._finished_result()
        start_epoch = self._restore() if resume else 0
        self.distiller.prepare_stage(self.data, self.device)
        task = self._start_progress(start_epoch)
        self._open_stage_loaders()
        try:
            with self._data_parallel_steps():
                for epoch in range(start_epoch, self.cfg.epochs):
                    row = self._run_epoch(epoch, task)
                    self._end_epoch(epoch, row)
        finally:
            self._close_stage_loaders()
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
        if self.parallel is not None:
            self.parallel.barrier()  # rank 0 wrote the selected checkpoint that every process loads now
        self.load_best_student()
        return result

    def load_best_student(self) -> None:
        """The selected epoch's student (and the parts the stage trained beside it)."""
        state = load_checkpoint(self.files.best, f"{self.label} best checkpoint")
        self.distiller.load_state_dict(state)

    # ------------------------------------------------------------------------------------------ epochs
    def _run_epoch(self, epoch: int, task) -> dict[str, Any]:
        seed = epoch_seed(self.seed, epoch, self.stage_index)
        torch.manual_seed(augmentation_seed(seed, self.parallel.rank if self.parallel else None))
        self.distiller.on_epoch_start(epoch, self.cfg.epochs)
        self.distiller.train()
        started = time.perf_counter()
        tally = EpochTally()
        unlabeled = self._unlabeled_batches(seed)
        for images, labels in self._train_batches(seed):
            self.train_step(images, labels, unlabeled, epoch, tally)
            if task is not None:
                self.progress.advance(task)
        sums, correct, seen, task_loss = tally.totals(self.parallel)
        self._check_finite(sums.get("loss", 0.0), list(sums), epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        val_acc, val_loss = self._validate()
        score = self._selection_score() if self.select == "metric" else None
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
            rate = seen / max(row["epoch_time_s"], 1e-9)  # training images per second, validation included
            self.progress.update(task, description=self._describe(epoch + 1, val_acc, rate))
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
        for methods with label-free terms), counted into ``tally`` on the device: nothing here waits for the
        GPU except every _FINITE_CHECK_EVERY-th step's finiteness check (benchmarks/train_step.py times it)."""
        images, labels = self._to_device(images), labels.to(self.device, non_blocking=True)
        extra = self._to_device(next(unlabeled)) if unlabeled is not None else None
        if self.steps_done == 0:
            self._prepare_first_batch(images)
        self.distiller.on_step_start(self.steps_done, self.data.steps_per_epoch * self.cfg.epochs)
        self.distiller.before_step(images, labels, self.optimizer)
        with self._autocast():
            logits, terms = self.model(images, labels, extra)
        loss = self._step(terms)
        batch = labels.numel()
        # The unweighted cross-entropy, comparable across methods (a method's own CE term may be scaled).
        logits = logits.detach().float()
        tally.task_loss = tally.task_loss + F.cross_entropy(logits, labels, reduction="sum")
        tally.add({"loss": loss, **terms}, batch)
        tally.correct = tally.correct + (logits.argmax(1) == labels).sum()
        tally.seen += batch
        self.steps_done += 1
        if self.steps_done % _FINITE_CHECK_EVERY == 0:
            self._check_finite(tally.sums["loss"].item(), list(terms), epoch)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def _prepare_first_batch(self, images: torch.Tensor) -> None:
        """State an objective sets from its first batch, made once: under DDP rank 0's goes to everyone."""
        with self._autocast():
            self.distiller.prepare_first_batch(images)
        if self.parallel is not None:
            self.parallel.broadcast_buffers(self.distiller)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

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
                round_seed = unlabeled_round_seed(seed, round_)
                stage_loader = self._stage_loaders.get("unlabeled")
                if stage_loader is None:
                    yield from self.data.unlabeled_loader(round_seed, self._shard())
                else:
                    stage_loader.batch_sampler.set_epoch(round_seed)
                    yield from stage_loader

        return batches()

    def _train_batches(self, seed: int):
        """The epoch's labelled batches: a fresh loader per epoch, or the stage's persistent one."""
        stage_loader = self._stage_loaders.get("train")
        if stage_loader is None:
            return self.data.train_loader(seed, self._shard())
        stage_loader.batch_sampler.set_epoch(seed)
        return stage_loader

    def _open_stage_loaders(self) -> None:
        """data.persistent_workers: one loader per part for the whole stage, its workers kept alive."""
        self._stage_loaders = {}
        if not self.data.persistent_workers:
            return
        self._stage_loaders["train"] = self.data.stage_loader("train", self._shard())
        if self.data.unlabeled is not None and self.distiller.learns_from_unlabeled:
            self._stage_loaders["unlabeled"] = self.data.stage_loader("unlabeled", self._shard())

    def _close_stage_loaders(self) -> None:
        for loader in self._stage_loaders.values():
            close_loader(loader)
        self._stage_loaders = {}

    def _step(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.distiller.trainable_parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    def _check_finite(self, loss_sum: float, terms: list[str], epoch: int) -> None:
        """A NaN or infinite loss stops the stage: its sum over the epoch so far is checked, so one bad step
        anywhere shows (the optimizer has stepped on it by then; the epoch is not saved)."""
        if not math.isfinite(loss_sum):
            shown = ", ".join(t for t in terms if t != "loss")
            raise TrainingDiverged(
                f"train: the {self.label} loss became {loss_sum} in epoch {epoch + 1} "
                f"(terms: {shown}); lower train.optimizer.lr or set train.grad_clip"
            )

    def _validate(self) -> tuple[float, float]:
        """Validation accuracy and loss of the student as rank 0 holds it: under DDP each process scores
        its share of the images and the counts are summed."""
        student = self.distiller.student
        if self.parallel is None:
            return evaluate(student, self.data.eval_loader("val"), self.device)
        self.parallel.broadcast_buffers(student)  # BatchNorm statistics: rank 0's, the ones it saves
        counts = evaluation_counts(student, self.data.eval_loader("val", self._shard()), self.device)
        return accuracy_and_loss(self.parallel.all_reduce_sum(counts))

    def _selection_score(self) -> float:
        if self.parallel is None:
            return self.distiller.selection_metric(self.data, self.device)
        self.parallel.broadcast_buffers(self.distiller)
        return self.parallel.broadcast_object(self.distiller.selection_metric(self.data, self.device))

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

    def _describe(self, epoch: int, val_acc: float | None, images_per_s: float | None = None) -> str:
        acc = f"val {val_acc:5.1f}%" if val_acc is not None else ""
        speed = f" {images_per_s:,.0f} img/s" if images_per_s is not None else ""
        return f"{self.label:<10} epoch {epoch:>3}/{self.cfg.epochs} {acc}{speed}"
