"""Training-step images/s from an ImageFolder against the same step on images already in memory.

The folders are written from scikit-learn's digits (no download): PNG and JPEG, at 28×28 grayscale and at
224×224 RGB. For each, edgekd's own data path (build_data, the training loader with its augmentation) feeds
a real training step (forward, cross-entropy, backward, SGD) of a small student, in three ways:

* ``memory``: the files decoded once when the data opens (``data.image_cache: memory``, edgekd's default
  where the images fit), then served from a uint8 array;
* ``off``: every file read and decoded on every load (the behaviour before the decode cache);
* ``tensors``: the same decoded images as float tensors already in memory (an InMemoryPool): the floor
  the data path is measured against, with the same loader, augmentation and step.

Every way runs ``--epochs`` epochs; images/s after the first epoch is the median of the later epochs, and
the decode at open ("first-epoch cost") is timed on its own. The ways are interleaved per epoch so that a
burst of load on a shared machine hits all of them alike. Writes benchmarks/results/data_throughput.json:

    python benchmarks/data_throughput.py [--epochs 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from edgekd.bench import environment_record
from edgekd.config.data import DataConfig
from edgekd.data import build_data
from edgekd.data.pools import InMemoryPool
from edgekd.data.preprocess import Preprocess
from edgekd.models import create_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "data_throughput.json"
# (name, side, channels, images written, the student fed: zoo name and width)
SETTINGS = [
    ("28px gray", 28, 1, 1797, ("resnet8", 16)),
    ("224px RGB", 224, 3, 240, ("resnet8", 8)),
]
FORMATS = ("png", "jpeg")
WAYS = ("tensors", "memory", "off")


def write_folder(folder: Path, side: int, channels: int, count: int, fmt: str) -> None:
    images, labels = load_digits(return_X_y=True)
    mode = "L" if channels == 1 else "RGB"
    for row in range(count):
        pixels = (images[row].reshape(8, 8) * 16).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((side, side), Image.BILINEAR).convert(mode)
        target = folder / str(labels[row])
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{row}.{'png' if fmt == 'png' else 'jpg'}", quality=90)


def open_data(folder: Path, side: int, channels: int, way: str, batch: int):
    """The training view of `way`, and the seconds it took to open (the decode, for `memory`)."""
    cache = "off" if way == "off" else "memory"
    cfg = DataConfig(
        dataset="imagefolder",
        root=folder,
        image_size=side,
        channels=channels,
        image_cache=cache,
        batch_size=batch,
        augment="crop",
    )
    started = time.perf_counter()
    bundle = build_data(cfg, subset=False)
    opened = time.perf_counter() - started
    if way == "tensors":
        pool = bundle.train.pool
        ready = torch.from_numpy(np.asarray(pool.images))
        bundle.train.pool = InMemoryPool(ready, pool.labels, Preprocess())
    return bundle, opened


def epoch_images_per_s(bundle, model, optimizer, epoch: int) -> float:
    model.train()
    seen, started = 0, time.perf_counter()
    for images, labels in bundle.train_loader(seed=epoch):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen / (time.perf_counter() - started)


def measure(
    folder: Path, side: int, channels: int, student: tuple[str, int], epochs: int, batch: int
) -> dict:
    runs = {}
    for way in WAYS:
        bundle, opened = open_data(folder, side, channels, way, batch)
        torch.manual_seed(0)
        model = create_model(student[0], bundle.num_classes, channels, width=student[1])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        runs[way] = {"bundle": bundle, "model": model, "optimizer": optimizer, "open_s": opened, "rates": []}
    for epoch in range(epochs):  # interleaved: the ways share whatever load the machine has
        for way in WAYS:
            run = runs[way]
            run["rates"].append(epoch_images_per_s(run["bundle"], run["model"], run["optimizer"], epoch))
    floor = statistics.median(runs["tensors"]["rates"][1:])
    result = {}
    for way, run in runs.items():
        later = statistics.median(run["rates"][1:])
        result[way] = {
            "open_s": round(run["open_s"], 3),
            "images_per_s_by_epoch": [round(rate, 1) for rate in run["rates"]],
            "images_per_s_after_first_epoch": round(later, 1),
            "vs_tensors": round(later / floor, 3),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgekd-throughput-") as scratch:
        for name, side, channels, count, student in SETTINGS:
            for fmt in FORMATS:
                folder = Path(scratch) / f"{side}-{channels}-{fmt}"
                write_folder(folder, side, channels, count, fmt)
                print(f"{name} {fmt}: {count} images ...", flush=True)
                ways = measure(folder, side, channels, student, args.epochs, args.batch)
                results.append(
                    {
                        "setting": name,
                        "format": fmt,
                        "images": count,
                        "student": f"{student[0]} width {student[1]}",
                        "ways": ways,
                    }
                )
                print(json.dumps(ways), flush=True)
    record = {
        "command": " ".join(["python", "benchmarks/data_throughput.py", *sys.argv[1:]]),
        "what": __doc__.split("\n\n")[0],
        "threads": args.threads,
        "batch": args.batch,
        "epochs": args.epochs,
        "environment": environment_record(args.threads).to_dict(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        # other work on the machine slows every way alike (interleaved epochs); the ratios are what to read
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "results": results,
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
