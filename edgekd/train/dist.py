"""Data-parallel training on PyTorch's own engine: a torchrun launch, one process per GPU (or CPU slot).

torchrun (`python -m torch.distributed.run`, or `edgekd build --nproc N`) starts the processes and sets
RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; :func:`start` joins the process group (gloo on the CPU,
NCCL on CUDA) and returns a :class:`Parallel` that the pipeline hands down to every trainer. Without torchrun
there is no process group and every helper here is a no-op, so one code path serves both.

Rules the pipeline keeps under DDP (README, "Many GPUs"):
- every rank runs the same training calls in the same order (collectives must line up); scoring, export,
  benchmarks and the report run on rank 0 alone after training;
- only rank 0 writes files; a rank that reads what rank 0 wrote waits at a barrier first;
- a step whose failure must stop every rank (opening the run folder, sizing to a latency budget) runs on
  rank 0 and its outcome, value or error, is broadcast: the others raise the same error instead of waiting
  at the next collective until the timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from edgekd.errors import EdgekdError

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run: its rank among `world` processes and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    sync_batchnorm: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, in place (one collective, whatever the tensor's length)."""
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's value on every rank (pickled: small objects only)."""
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0, device=self.device if self.backend == "nccl" else None)
        return holder[0]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics, lazily computed margins, class centres) on every rank."""
        for buffer in module.buffers():
            if buffer.is_floating_point() or buffer.dtype in (torch.int64, torch.int32, torch.bool):
                dist.broadcast(buffer.data, src=0)

    def main_does(self, work: Callable[[], T]) -> T:
        """Run `work` on rank 0 and hand its result to every rank; an EdgekdError it raises is raised on
        every rank (the others would otherwise wait at their next collective until the timeout)."""
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, work())
            except EdgekdError as exc:
                outcome = (False, (str(exc), exc.exit_code))
        ok, value = self.broadcast_object(outcome)
        if ok:
            return value
        message, code = value
        error = EdgekdError(message)
        error.exit_code = code
        raise error

    def describe(self) -> dict[str, Any]:
        return {
            "processes": self.world,
            "backend": self.backend,
            "sync_batchnorm": self.sync_batchnorm,
            "batch_size": "global (data.batch_size is split evenly over the processes)",
        }


def whole_batch(share: torch.Tensor) -> torch.Tensor:
    """Under DDP, the rows of the whole global batch (every process's share, by rank) on every process;
    outside DDP `share` itself. For a loss over relations between a batch's images (RKD's distances and
    angles, REFILLED's triplets and batch classes), which over one process's share would be another loss
    than one process's. The rows come in another order than one process's: such a loss does not depend on it.

    Differentiable: every process's loss reads every row, so a row's gradient is the sum of the processes'
    (an all-reduce in backward, as in GlobalBatchNorm2d), which DDP's averaging of the parameters' gradients
    divides by the process count again: such a loss's gradients are one process's, whatever the shares'
    sizes. Every process must call it at the same point of its step (it is a collective)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return share
    return _WholeBatch.apply(share)


class _WholeBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, share: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = torch.zeros(world, dtype=torch.int64, device=share.device)
        sizes[rank] = share.shape[0]
        dist.all_reduce(sizes)  # the shares differ by an image when a batch does not split evenly
        counts = sizes.tolist()
        padded = share.new_zeros((max(counts), *share.shape[1:]))
        padded[: share.shape[0]] = share
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.rows = (sum(counts[:rank]), sum(counts[: rank + 1]))
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.contiguous().clone()
        dist.all_reduce(summed)
        start, stop = ctx.rows
        return summed[start:stop]


def die_with_parent() -> None:
    """Under torchrun: have the kernel kill this worker when its launcher dies, even by SIGKILL.

    Without it a killed launcher leaves its workers running: they keep writing the run folder and hold its
    lock, and `--resume` would race them."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)


def start(
    device: str, *, backend: str = "auto", sync_batchnorm: bool = True, timeout_s: int = 1800
) -> Parallel:
    """Join torchrun's process group: NCCL when training on CUDA, gloo on the CPU (or as asked)."""
    local_rank = int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        if local_rank >= torch.cuda.device_count():
            raise EdgekdError(
                f"distributed: local rank {local_rank} has no GPU (this machine has "
                f"{torch.cuda.device_count()}); allowed: --nproc up to the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        placed = torch.device("cuda", local_rank)
    else:
        placed = torch.device("cpu")
    chosen = ("nccl" if on_cuda else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and not on_cuda:
        raise EdgekdError("distributed.backend: 'nccl' needs CUDA; allowed on the CPU: auto, gloo")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=chosen,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=placed if chosen == "nccl" else None,
        )
    return Parallel(
        rank=dist.get_rank(),
        world=world,
        local_rank=local_rank,
        device=placed,
        backend=chosen,
        sync_batchnorm=sync_batchnorm,
    )


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(recipe) -> Iterator[Parallel | None]:
    """The process group for a build launched by torchrun (None without torchrun), left cleanly."""
    if not launched_by_torchrun():
        yield None
        return
    die_with_parent()
    settings = recipe.distributed
    parallel = start(
        recipe.device,
        backend=settings.backend,
        sync_batchnorm=settings.sync_batchnorm,
        timeout_s=settings.timeout_s,
    )
    try:
        yield parallel
    finally:
        stop()
