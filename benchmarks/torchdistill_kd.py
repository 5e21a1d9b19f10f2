"""The KD training step the way torchdistill runs it, for benchmarks/train_step.py to time beside edgekd's.

Built from torchdistill's own parts, called, never copied (``pip install edgekd[torchdistill]``):

* ``torchdistill.core.distillation.get_distillation_box``: a DistillationBox built from a train config (a
  dict, as its YAML files give it) over in-memory tensors (a TensorDataset under the config's dataset id):
  the teacher and student wrappers of its CIFAR-10 KD sample config (teacher ``DataParallel``, student
  ``DistributedDataParallel``, which its ``wrap_model`` turns into ``DataParallel`` outside a distributed run,
  and only on CUDA), SGD from its optimizer registry, and the criterion ``WeightedSumLoss`` over one ``KDLoss``
  term (its registered loss modules). Each step runs the box's own ``forward_process`` (teacher forward under
  ``torch.no_grad``, student forward, its I/O dicts, the criterion) and ``post_forward_process`` (backward,
  optimizer step, ``zero_grad``); ``pre_epoch_process`` runs once before the first step.
* ``torchdistill.misc.log.MetricLogger``/``SmoothedValue``: the per-step logging, driven through
  ``MetricLogger.log_every`` exactly as its example loop iterates its data loader (so its per-iteration
  timers and its every-``log_freq`` log line are paid too).

Re-written here, because it is not part of the installed package: the per-batch body of ``train_one_epoch``
in torchdistill's example script (examples/torchvision/image_classification.py): move the batch to the
device, ``forward_process``, ``post_forward_process``, ``metric_logger.update(loss=loss.item(), lr=...)``, the
images-per-second meter, and the NaN/Inf check of the loss. The batches come from the benchmark (already on
the device, as for every other variant), not from the box's data loader; the loader the box builds over the
same tensors is left unused.

Two deliberate differences from its example: the teacher is passed in eval mode (the box never calls
``teacher.eval()`` and its example builds the teacher in train mode, so its BatchNorm would use batch
statistics; eval mode makes both libraries compute the same loss), and the KD weights are set so the loss
equals edgekd's: torchdistill's ``alpha`` weighs the cross-entropy, edgekd's ``alpha`` the distillation term.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import torch
from torch import nn

LOG_FREQ = 100  # the sample configs' train.log_freq


def installed_version() -> str | None:
    try:
        return metadata.version("torchdistill")
    except metadata.PackageNotFoundError:
        return None


class _Feed:
    """What log_every iterates: the batch the caller put in last (log_every needs a length for its log line)."""

    def __init__(self, length: int):
        self.length = length
        self.pending: tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
        while True:
            assert self.pending is not None
            yield self.pending


def train_config(
    batch: int, optimizer: dict[str, Any], temperature: float, kd_alpha: float, wrap: bool
) -> dict:
    """A torchdistill train config for Hinton KD, shaped as its CIFAR-10 KD sample config.

    ``kd_alpha`` is edgekd's weight of the distillation term; torchdistill's KDLoss takes the CE weight.
    """
    return {
        "log_freq": LOG_FREQ,
        "num_epochs": 1,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": batch, "num_workers": 0, "drop_last": True},
            "cache_output": None,
        },
        "teacher": {
            "forward_proc": "forward_batch_only",
            "sequential": [],
            "wrapper": "DataParallel" if wrap else None,
            "requires_grad": False,
            "frozen_modules": [],
        },
        "student": {
            "forward_proc": "forward_batch_only",
            "adaptations": None,
            "sequential": [],
            "wrapper": "DistributedDataParallel" if wrap else None,
            "requires_grad": True,
            "frozen_modules": [],
        },
        "optimizer": {"key": "SGD", "kwargs": dict(optimizer)},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": ".",
                                "student_module_io": "output",
                                "teacher_module_path": ".",
                                "teacher_module_io": "output",
                                "temperature": temperature,
                                "alpha": 1.0 - kd_alpha,
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }


class TorchdistillKD:
    """One torchdistill DistillationBox and its example loop's logging; ``step(images, labels)`` is one
    iteration of that loop."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        dataset: torch.utils.data.Dataset,
        *,
        batch: int,
        device: torch.device,
        optimizer: dict[str, Any],
        temperature: float,
        kd_alpha: float,
        wrap: bool,
    ):
        from torchdistill.common.main_util import is_main_process
        from torchdistill.core.distillation import get_distillation_box
        from torchdistill.misc.log import MetricLogger, SmoothedValue

        self.device = device
        self.is_main_process = is_main_process
        config = train_config(batch, optimizer, temperature, kd_alpha, wrap)
        self.box = get_distillation_box(teacher, student, {"train": dataset}, config, device, None, False, 1)
        self.box.pre_epoch_process(epoch=0)
        self.metric_logger = MetricLogger(delimiter="  ")
        self.metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))
        self.metric_logger.add_meter("img/s", SmoothedValue(window_size=10, fmt="{value}"))
        self.feed = _Feed(len(dataset) // batch)
        self.batches = self.metric_logger.log_every(self.feed, LOG_FREQ, "Epoch: [0]")

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The box's loss on one batch, without a step (to check it equals edgekd's)."""
        return self.box.forward_process(images.to(self.device), labels.to(self.device), {})

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.feed.pending = (images, labels, {})
        sample_batch, targets, supp_dict = next(self.batches)
        started = time.time()
        sample_batch, targets = sample_batch.to(self.device), targets.to(self.device)
        loss = self.box.forward_process(sample_batch, targets, supp_dict)
        self.box.post_forward_process(loss=loss)
        self.metric_logger.update(loss=loss.item(), lr=self.box.optimizer.param_groups[0]["lr"])
        self.metric_logger.meters["img/s"].update(sample_batch.shape[0] / (time.time() - started))
        if (torch.isnan(loss) or torch.isinf(loss)) and self.is_main_process():
            raise ValueError(f"torchdistill step: the loss became {loss}")
