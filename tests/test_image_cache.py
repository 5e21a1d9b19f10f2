"""ImageFolder images are decoded once per run (in memory) or once per machine (the disk cache), not per
epoch: the decoded images equal a fresh decode, a changed file is decoded again, and a whole build — the
teacher and every student — decodes each file once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from edgekd.data import decoded
from edgekd.data.decoded import ImageCache
from edgekd.data.pools import DecodedFilePool, FilePool
from edgekd.data.preprocess import Preprocess


def write_digit_pngs(folder: Path, per_class: int = 12, size: int = 20) -> list[Path]:
    """Grayscale PNGs of scikit-learn's digits, upscaled: real handwriting, no download."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    written = []
    for digit in range(3):
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        rows = np.flatnonzero(labels == digit)[:per_class]
        for k, row in enumerate(rows):
            pixels = (images[row].reshape(8, 8) * 16).clip(0, 255).astype(np.uint8)
            path = folder / str(digit) / f"{k}.png"
            Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).save(path)
            written.append(path)
    return written


def pools(folder: Path, cache: ImageCache, size: int = 16) -> tuple[DecodedFilePool, FilePool]:
    paths = sorted(str(path) for path in folder.rglob("*.png"))
    labels = np.zeros(len(paths), dtype=np.int64)
    preprocess = Preprocess(channels=1, size=(size, size))
    return DecodedFilePool(paths, labels, preprocess, cache), FilePool(paths, labels, preprocess)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_decoded_images_equal_a_fresh_decode(tmp_path, mode):
    write_digit_pngs(tmp_path / "images")
    cached, fresh = pools(tmp_path / "images", ImageCache(mode, tmp_path / "cache"))
    rows = np.arange(len(cached))
    # uint8 storage: within half a grey level of the float decode
    assert np.abs(cached.load(rows).numpy() - fresh.load(rows).numpy()).max() <= 0.5 / 255 + 1e-6
    assert cached.decode_count.where == mode and cached.decode_count.decoded == len(rows)


def test_the_disk_cache_is_reused_and_a_changed_file_decoded_again(tmp_path):
    paths = write_digit_pngs(tmp_path / "images")
    cache = ImageCache("disk", tmp_path / "cache")
    first, _ = pools(tmp_path / "images", cache)
    again, _ = pools(tmp_path / "images", cache)
    assert again.decode_count.decoded == 0 and again.decode_count.from_cache == len(paths)

    changed = sorted(str(path) for path in paths).index(str(paths[0]))
    Image.new("L", (20, 20), 255).save(paths[0])  # the same name, new pixels
    os.utime(paths[0], ns=(1, 10**18))  # and a new modification time, whatever the clock's resolution
    after, fresh = pools(tmp_path / "images", cache)
    assert after.decode_count.decoded == 1 and after.decode_count.from_cache == len(paths) - 1
    assert after.load([changed]).min().item() == 1.0  # the new, white image, not the cached digit
    rows = np.arange(len(paths))
    others = rows != changed
    assert np.array_equal(after.load(rows[others]).numpy(), first.load(rows[others]).numpy())
    assert np.abs(after.load(rows).numpy() - fresh.load(rows).numpy()).max() <= 0.5 / 255 + 1e-6


@pytest.mark.slow
def test_a_build_decodes_each_file_once_for_the_teacher_and_every_student(cli, tmp_path):
    write_digit_pngs(tmp_path / "data" / "train")
    write_digit_pngs(tmp_path / "data" / "test", per_class=4)
    recipe = {
        "name": "folder",
        "output_dir": str(tmp_path / "runs"),
        "data": {
            "dataset": "imagefolder",
            "root": str(tmp_path / "data"),
            "image_size": 16,
            "channels": 1,
            "batch_size": 16,
            "image_cache": "memory",
        },
        "teacher": {"model": "resnet8", "model_args": {"width": 8}, "train": {"epochs": 2}},
        "student": {"model": "resnet8", "model_args": {"width": 8}},
        "distill": {"method": "kd", "baselines": ["scratch"]},
        "train": {"epochs": 2},
        "seeds": [0, 1],
        "export": {"targets": {"onnx": ["fp32"]}},
        "benchmark": {"enabled": False},
        "report": {"plots": False},
    }
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(recipe))
    before = decoded.files_decoded
    result = cli("build", path, "--quiet")
    assert result.exit_code == 0, result.output[-3000:]
    assert decoded.files_decoded - before == 36 + 12  # every training and test file, once

    data = json.loads((tmp_path / "runs" / "folder" / "metrics.json").read_text())["data"]
    # the statistics used (computed on the training images) are the ones the artifact asks the device for
    from edgekd.exporters import read_metadata

    # the shipped student's artifact (kd's or scratch's, whichever validated better)
    (artifact,) = (tmp_path / "runs" / "folder" / "artifacts").glob("*_onnx_fp32.onnx")
    metadata = read_metadata(artifact)
    assert json.loads(metadata["mean"]) == pytest.approx(data["student"]["input_spec"]["mean"])
    assert json.loads(metadata["std"]) == pytest.approx(data["student"]["input_spec"]["std"])
    assert data["student"]["input_spec"]["mean"] != pytest.approx([0.459], abs=0.01)  # not ImageNet's
    for role in ("teacher", "student"):
        assert data[role]["image_files"] == {
            "train": {"decoded": 36, "from_cache": 0, "kept": "memory"},
            "test": {"decoded": 12, "from_cache": 0, "kept": "memory"},
        }


# ------------------------------------------------------------------------------------ normalization
def folder_stats(root: Path, **config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from edgekd.config.data import DataConfig
    from edgekd.data import build_data

    cfg = DataConfig(
        dataset="imagefolder", root=root, image_size=16, channels=1, image_cache="memory", **config
    )
    spec = build_data(cfg, subset=False).input_spec
    return spec.mean, spec.std


def test_normalization_comes_from_the_training_split_only(tmp_path):
    train = write_digit_pngs(tmp_path / "data" / "train")
    test = write_digit_pngs(tmp_path / "data" / "test", per_class=3)
    before = folder_stats(tmp_path / "data")
    assert 0.05 < before[0][0] < 0.6 and before[1][0] > 0.05  # dark digits on black: not ImageNet's 0.449
    Image.new("L", (20, 20), 255).save(test[0])  # a white test image
    assert folder_stats(tmp_path / "data") == before
    Image.new("L", (20, 20), 255).save(train[0])  # a white training image moves the statistics
    assert folder_stats(tmp_path / "data")[0][0] > before[0][0]


def test_normalization_modes_and_the_auto_rule(tmp_path):
    from edgekd.config.data import NormalizeStats
    from edgekd.config.loading import validate_recipe
    from edgekd.errors import EdgekdError

    write_digit_pngs(tmp_path / "data")
    from edgekd.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
    from edgekd.data.preprocess import adapt_stats

    imagenet = (adapt_stats(IMAGENET_MEAN, 1), adapt_stats(IMAGENET_STD, 1))
    assert folder_stats(tmp_path / "data", normalize="imagenet") == imagenet
    given = NormalizeStats(mean=[0.5], std=[0.25])
    assert folder_stats(tmp_path / "data", normalize=given) == ((0.5,), (0.25,))
    with pytest.raises(EdgekdError, match=r"data\.normalize: 3 values of mean and std for 1-channel images"):
        folder_stats(tmp_path / "data", normalize=NormalizeStats(mean=[0.5] * 3, std=[0.25] * 3))

    def resolved(teacher: str, dataset: str) -> str:
        data = {"dataset": dataset, **({"root": str(tmp_path / "data")} if dataset == "imagefolder" else {})}
        recipe = {
            "name": "n",
            "data": data,
            "teacher": {"model": teacher, "train": {"epochs": 1}},
            "student": {"model": "resnet8"},
            "output_dir": str(tmp_path / "runs"),
        }
        return validate_recipe(recipe).normalization

    assert resolved("torchvision:resnet18", "imagefolder") == "imagenet"
    assert resolved("resnet20", "imagefolder") == "train"
    assert resolved("resnet20", "digits") == "dataset"
