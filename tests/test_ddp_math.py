"""Data-parallel training computes what one process computes: two gloo processes, each holding half of
every batch (edgekd's sharded batches, GlobalBatchNorm2d, DDP's gradient averaging), end a few SGD steps
with the weights and BatchNorm statistics of one process holding the whole batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from edgekd.data.batches import ShardedBatchSampler
from edgekd.models import create_model
from edgekd.train.syncbn import GlobalBatchNorm2d, plain_batchnorm, synchronize_batchnorm

STEPS, BATCH, WORLD = 4, 16, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(BATCH, 3, 16, 16, generator=generator),
            torch.randint(0, 5, (BATCH,), generator=generator),
        )
        for _ in range(STEPS)
    ]


def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet8", num_classes=5, in_channels=3, width=8)


def train(net: nn.Module, data, shard: tuple[int, int] | None) -> nn.Module:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    net.train()
    for images, labels in data:
        if shard is not None:
            keep = next(iter(ShardedBatchSampler([list(range(BATCH))], *shard)))
            images, labels = images[keep], labels[keep]
        optimizer.zero_grad()
        F.cross_entropy(net(images), labels).backward()
        optimizer.step()
    return net


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    net = synchronize_batchnorm(model(), torch.device("cpu"))
    assert any(isinstance(m, GlobalBatchNorm2d) for m in net.modules())
    ddp = nn.parallel.DistributedDataParallel(net)
    train(ddp, batches(), (rank, WORLD))
    if rank == 0:
        torch.save(plain_batchnorm(net).state_dict(), out)
    dist.destroy_process_group()


def test_two_processes_match_one_holding_the_whole_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(worker, args=(free_port(), out), nprocs=WORLD, join=True)
    parallel = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    single = train(model(), batches(), None).state_dict()
    assert parallel.keys() == single.keys()
    for name, value in single.items():
        if value.is_floating_point():
            torch.testing.assert_close(parallel[name], value, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(parallel[name], value), name


def test_halves_differ_without_synchronized_statistics():
    """The check above can fail: BatchNorm over half a batch is not BatchNorm over the whole batch."""
    data = batches()
    single = train(model(), data, None).state_dict()
    half = train(model(), [(x[::2], y[::2]) for x, y in data], None).state_dict()
    worst = max((single[k] - half[k]).abs().max().item() for k in single if single[k].is_floating_point())
    assert worst > 1e-3


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_batches_cover_each_global_batch_once(world):
    global_batches = [[5, 1, 4, 0, 2, 3, 9], [7, 8, 6]]
    shares = [list(ShardedBatchSampler(global_batches, rank, world)) for rank in range(world)]
    for step, batch in enumerate(global_batches):
        assert sorted(i for share in shares for i in share[step]) == sorted(batch)


def test_plain_batchnorm_restores_the_module_exporters_know():
    net = synchronize_batchnorm(model(), torch.device("cpu"))
    restored = plain_batchnorm(net)
    kinds = {type(m) for m in restored.modules() if isinstance(m, nn.BatchNorm2d)}
    assert kinds == {nn.BatchNorm2d}
