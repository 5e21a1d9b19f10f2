"""What the tests of the optional edge runtimes (LiteRT, ExecuTorch) share: the skip when their extra is
missing, the digits as N×1×8×8 arrays, a briefly trained real student and its reference logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.bench.runners import runner_for
from edgekd.exporters import ModelIO
from edgekd.formats import Backend
from edgekd.models import create_model

IO = ModelIO(1, 8, 8, (0.5,), (0.5,), tuple(f"digit {d}" for d in range(10)))
TRAIN = 1200  # digits 0..1199 train and calibrate; the other 597 are held out for agreement checks
# Timing as short as the harness allows: these tests check what is built and checked, not how fast.
QUICK_TIMING = {"threads": 1, "warmup_iters": 1, "warmup_s": 0.0, "min_iters": 3, "min_time_s": 0.0}


def skip_without(entry: Backend) -> pytest.MarkDecorator:
    """Skip a module when the backend's runtime or exporter packages are not installed, naming its extra."""
    missing = bool(entry.missing) or not all(package.present for package in entry.export_packages)
    return pytest.mark.skipif(missing, reason=f"needs the {entry.name} extra: {entry.install}")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = ((data.images.astype(np.float32) / 16.0 - 0.5) / 0.5)[:, None]  # N×1×8×8, as IO describes
    return np.ascontiguousarray(images), data.target.astype(np.int64)


def trained_student(images: np.ndarray, labels: np.ndarray) -> nn.Module:
    """resnet8 (width 8) after 60 Adam steps (~90% held-out accuracy): INT8 agreement then means something."""
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = torch.from_numpy(images[:TRAIN]), torch.from_numpy(labels[:TRAIN])
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    # One thread: for batches this small, two OpenMP threads on a busy 2-core machine spin-wait on each other
    # (measured 10-40x slower), and one thread is as fast as two on an idle one.
    torch.set_num_threads(1)
    try:
        for _ in range(60):
            batch = torch.randint(0, TRAIN, (64,), generator=generator)
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def held_out_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images[TRAIN:])).numpy()


def logits(path: Path, images: np.ndarray, batch: int) -> np.ndarray:
    """An artifact's logits of ``images``, run ``batch`` at a time through its runner."""
    runner = runner_for(path, threads=1)
    runner.load()
    return np.concatenate([runner.run(images[i : i + batch]) for i in range(0, len(images), batch)])
