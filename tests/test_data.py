"""Tests of edgekd.data: splits, subsets, few-shot, preprocessing, augmentation, loaders and on-disk sets.

Everything runs on scikit-learn's bundled digits or on tiny fake data written to tmp_path: no downloads.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.config.data import DataConfig
from edgekd.data import DataBundle, InputSpec, build_data
from edgekd.errors import EdgekdError

DIGITS_COUNT = 1797


def split_views(bundle: DataBundle):
    return bundle.train, bundle.val, bundle.test


def all_images(dataset) -> torch.Tensor:
    return torch.stack([image for image, _ in dataset.__getitems__(list(range(len(dataset))))])


@pytest.fixture(scope="module")
def teacher() -> DataBundle:
    return build_data(DataConfig(), subset=False)


# ------------------------------------------------------------------------------------------------ digits
def test_digits_split_covers_everything_once(teacher: DataBundle):
    train, val, test = (set(view.indices.tolist()) for view in split_views(teacher))
    assert len(train) + len(val) + len(test) == DIGITS_COUNT
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(DIGITS_COUNT))
    assert teacher.num_classes == 10 and teacher.class_ids == list(range(10))
    assert teacher.class_names == [str(d) for d in range(10)]
    # Default fractions: test 20 % of all, val 15 % of the rest (rounded per class).
    assert abs(len(test) - 0.2 * DIGITS_COUNT) <= 10
    assert abs(len(val) - 0.15 * (DIGITS_COUNT - len(test))) <= 10


def test_digits_split_is_deterministic_and_follows_split_seed(teacher: DataBundle):
    again = build_data(DataConfig(), subset=False)
    for first, second in zip(split_views(teacher), split_views(again), strict=True):
        np.testing.assert_array_equal(first.indices, second.indices)
    other = build_data(DataConfig(split_seed=1), subset=False)
    assert not np.array_equal(teacher.test.indices, other.test.indices)
    assert not np.array_equal(teacher.val.indices, other.val.indices)


def test_digits_training_set_is_normalized(teacher: DataBundle):
    images = all_images(teacher.train)
    assert images.shape[1:] == (1, 8, 8)
    assert abs(images.mean().item()) < 1e-4
    assert abs(images.std().item() - 1.0) < 1e-3
    spec = teacher.input_spec
    assert isinstance(spec, InputSpec)
    assert (spec.channels, spec.height, spec.width) == (1, 8, 8)
    assert 0.0 < spec.mean[0] < 1.0 and 0.0 < spec.std[0] < 1.0


def test_stratification_keeps_every_class_in_every_split(teacher: DataBundle):
    for view in split_views(teacher):
        counts = np.bincount(view.labels, minlength=10)
        assert (counts > 0).all()
        # Class proportions follow the whole data set's (about 10 % each).
        assert counts.min() >= 0.7 * counts.max()


def test_summary_is_json_ready(teacher: DataBundle):
    summary = teacher.summary()
    json.dumps(summary)
    sizes = {"train": len(teacher.train), "val": len(teacher.val), "test": len(teacher.test)}
    assert summary["sizes"] == sizes
    assert summary["test_split"] == "carved" and summary["class_subset"] is None
    assert summary["input_spec"] == teacher.input_spec.to_dict()


# --------------------------------------------------------------------------------------- class subsets
def test_class_subset_remaps_labels_in_the_given_order(teacher: DataBundle):
    student = build_data(DataConfig(classes=[7, 2, 9]))
    assert student.num_classes == 3
    assert student.class_ids == [7, 2, 9]
    assert student.class_names == ["7", "2", "9"]
    expected = {7: 0, 2: 1, 9: 2}
    for view in split_views(student):
        original = view.pool.labels[view.indices]
        assert set(original.tolist()) == {7, 2, 9}
        np.testing.assert_array_equal(view.labels, [expected[o] for o in original.tolist()])
        assert [label for _, label in (view[i] for i in range(5))] == view.labels[:5].tolist()
    assert student.summary()["class_subset"] == [7, 2, 9]


def test_student_test_set_is_the_teachers_test_images_of_its_classes(teacher: DataBundle):
    student = build_data(DataConfig(classes=[7, 2, 9]))
    teacher_labels = teacher.test.labels
    keep = np.isin(teacher_labels, [7, 2, 9])
    np.testing.assert_array_equal(student.test.indices, teacher.test.indices[keep])
    torch.testing.assert_close(all_images(student.test), all_images(teacher.test)[torch.from_numpy(keep)])
    # Same inputs for both models: identical normalization.
    assert student.input_spec == teacher.input_spec


def test_teacher_view_ignores_subset_options():
    cfg = DataConfig(classes=[3, 1], per_class=4)
    full = build_data(cfg, subset=False)
    plain = build_data(DataConfig(), subset=False)
    assert full.num_classes == 10 and full.per_class is None
    np.testing.assert_array_equal(full.train.indices, plain.train.indices)


# ------------------------------------------------------------------------------------------- few-shot
def test_few_shot_keeps_n_per_class_in_train_only():
    subset = DataConfig(classes=[7, 2, 9])
    few = build_data(DataConfig(classes=[7, 2, 9], per_class=5))
    whole = build_data(subset)
    np.testing.assert_array_equal(np.bincount(few.train.labels, minlength=3), [5, 5, 5])
    assert set(few.train.indices.tolist()) <= set(whole.train.indices.tolist())
    np.testing.assert_array_equal(few.val.indices, whole.val.indices)
    np.testing.assert_array_equal(few.test.indices, whole.test.indices)
    again = build_data(DataConfig(classes=[7, 2, 9], per_class=5))
    np.testing.assert_array_equal(few.train.indices, again.train.indices)
    assert few.summary()["few_shot_per_class"] == 5


def test_few_shot_without_subset_uses_all_classes():
    few = build_data(DataConfig(per_class=3))
    np.testing.assert_array_equal(np.bincount(few.train.labels, minlength=10), [3] * 10)


def test_few_shot_larger_than_a_class_is_an_error(teacher: DataBundle):
    smallest = int(np.bincount(teacher.train.labels).min())
    with pytest.raises(EdgekdError, match=rf"data\.per_class: {smallest + 1} .*{smallest} images") as info:
        build_data(DataConfig(per_class=smallest + 1))
    assert "\n" not in str(info.value)
    assert len(build_data(DataConfig(per_class=smallest)).train) == 10 * smallest


# ------------------------------------------------------------------------------------------- unlabelled
def test_unlabeled_subset_is_the_rest_of_the_students_training_images(teacher: DataBundle):
    classes = [1, 3, 5, 7, 9]
    few = build_data(DataConfig(classes=classes, per_class=10, unlabeled="subset", augment="crop"))
    pool_labels = few.train.pool.labels
    indices = few.unlabeled.view.indices
    assert set(pool_labels[indices]) == set(classes)
    assert not set(indices) & set(few.train.indices)  # labelled images are not repeated
    in_classes = teacher.train.indices[np.isin(teacher.train.labels, classes)]
    assert set(indices) | set(few.train.indices) == set(in_classes)
    assert not set(indices) & (set(few.val.indices) | set(few.test.indices))

    def first_batch(loader_seed: int) -> torch.Tensor:
        torch.manual_seed(0)  # the augmentation's random crops, as the trainer seeds them per epoch
        return next(iter(few.unlabeled_loader(loader_seed)))

    batch = first_batch(0)
    # images only: no label to leak; an even share of the epoch, at most a batch (data.last_batch: even)
    assert isinstance(batch, torch.Tensor) and batch.shape[1:] == (1, 8, 8) and 32 <= len(batch) <= 64
    assert torch.equal(batch, first_batch(0))
    assert not torch.equal(batch, first_batch(1))
    assert few.summary()["unlabeled"] == {"source": "subset", "images": len(in_classes) - 50}


def test_unlabeled_all_takes_every_class_and_only_the_student_view_has_it(teacher: DataBundle):
    cfg = DataConfig(classes=[2, 4], per_class=5, unlabeled="all", unlabeled_batch_size=32)
    view = build_data(cfg)
    assert len(view.unlabeled) == len(teacher.train) - 10
    assert set(view.train.pool.labels[view.unlabeled.view.indices]) == set(range(10))
    assert next(iter(view.unlabeled_loader(0))).shape[0] == 32
    assert build_data(cfg, subset=False).unlabeled is None
    plain = build_data(DataConfig(classes=[2, 4]))
    assert plain.unlabeled is None and plain.summary()["unlabeled"] == {"source": "none", "images": 0}
    with pytest.raises(ValueError, match="no unlabelled images"):
        plain.unlabeled_loader(0)


# ------------------------------------------------------------------------------ preprocessing and loaders
def test_image_size_and_channels_conversion():
    bundle = build_data(DataConfig(image_size=16, channels=3))
    image, _ = bundle.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert bundle.input_spec.to_dict()["channels"] == 3
    assert (bundle.input_spec.height, bundle.input_spec.width) == (16, 16)
    assert len(bundle.input_spec.mean) == len(bundle.input_spec.std) == 3
    # Gray replicated to RGB: the three planes are equal.
    torch.testing.assert_close(image[0], image[1])


def test_augmentation_changes_images_keeps_shape_and_is_reproducible():
    augmented = build_data(DataConfig(augment="crop_flip"))
    plain = augmented.eval_loader("train").dataset
    positions = list(range(32))
    torch.manual_seed(123)
    first = torch.stack([augmented.train[i][0] for i in positions])
    torch.manual_seed(123)
    second = torch.stack([augmented.train[i][0] for i in positions])
    originals = torch.stack([plain[i][0] for i in positions])
    assert first.shape == originals.shape == (32, 1, 8, 8)
    torch.testing.assert_close(first, second)
    assert not torch.equal(first, originals)
    # Labels are never touched by augmentation.
    assert [augmented.train[i][1] for i in positions] == [plain[i][1] for i in positions]


def test_crop_alone_never_flips():
    bundle = build_data(DataConfig(augment="crop", image_size=16))
    image = bundle.eval_loader("train").dataset[0][0]
    torch.manual_seed(0)
    cropped = bundle.train[0][0]
    assert cropped.shape == image.shape
    # Some crop offset reproduces most of the original unflipped: the shift is at most 2 pixels.
    pad = 2
    padded = torch.nn.functional.pad(image, (pad,) * 4)
    matches = [torch.equal(padded[:, t : t + 16, s : s + 16], cropped) for t in range(5) for s in range(5)]
    assert any(matches)


def batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def test_train_loader_order_follows_the_seed(teacher: DataBundle):
    first_images, first_labels = batches(teacher.train_loader(seed=5))
    again_images, again_labels = batches(teacher.train_loader(seed=5))
    other_images, _ = batches(teacher.train_loader(seed=6))
    assert len(first_labels) == len(teacher.train)  # drop_last=False
    torch.testing.assert_close(first_images, again_images)
    assert torch.equal(first_labels, again_labels)
    assert not torch.equal(first_images, other_images)


def test_eval_loader_is_in_split_order_without_augmentation():
    bundle = build_data(DataConfig(augment="crop_flip"))
    images, labels = batches(bundle.eval_loader("train"))
    assert labels.tolist() == bundle.train.labels.tolist()
    torch.testing.assert_close(images, all_images(bundle.eval_loader("train").dataset))
    assert len(batches(bundle.eval_loader("test"))[1]) == len(bundle.test)
    with pytest.raises(ValueError):
        bundle.eval_loader("holdout")  # type: ignore[arg-type]


MULTI_WORKER_CHECK = """
import torch
from edgekd.data import build_data
from edgekd.config.data import DataConfig

def batches(loader):
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)

bundle = build_data(DataConfig(augment="crop_flip", num_workers=2, batch_size=256))
first_images, first_labels = batches(bundle.train_loader(seed=1))
again_images, again_labels = batches(bundle.train_loader(seed=1))
torch.testing.assert_close(first_images, again_images)
assert torch.equal(first_labels, again_labels)
print("identical", len(first_labels))
"""


def test_multi_worker_loading_is_deterministic():
    # In a fresh interpreter: workers are forked, and forking this test process after earlier tests started
    # OpenVINO's and ONNX Runtime's thread pools in it crashed it now and then (seen: SIGSEGV, 1 run in ~8).
    # `edgekd build` forks its workers before it loads any runtime.
    result = subprocess.run([sys.executable, "-c", MULTI_WORKER_CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["identical", "1222"]


# ---------------------------------------------------------------------------------------- ImageFolder
CLASS_COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "owl": (30, 30, 200)}


def write_pngs(folder: Path, per_class: dict[str, int], size: tuple[int, int] = (10, 12)) -> None:
    """`per_class` PNGs of each class: a class colour plus a per-image brightness, width×height = size."""
    for name, count in per_class.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            colour = tuple(min(255, c + 5 * i) for c in CLASS_COLOURS[name])
            Image.new("RGB", size, colour).save(folder / name / f"{i}.png")


def test_imagefolder_single_pool_is_split(tmp_path: Path):
    write_pngs(tmp_path, {"cat": 8, "dog": 8, "owl": 8})
    bundle = build_data(DataConfig(dataset="imagefolder", root=tmp_path), subset=False)
    assert bundle.class_names == ["cat", "dog", "owl"]
    assert not bundle.official_test
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 24
    for view in split_views(bundle):
        assert set(view.labels.tolist()) == {0, 1, 2}
    image, _ = bundle.train[0]
    assert image.shape == (3, 12, 10)  # the images' own size, H×W
    # an ImageFolder is normalized with its own training images' statistics (data.normalize: auto)
    from edgekd.data.views import channel_stats

    assert bundle.input_spec.mean == pytest.approx(
        channel_stats(bundle.train.pool, np.arange(24))[0], abs=0.2
    )
    imagenet = build_data(
        DataConfig(dataset="imagefolder", root=tmp_path, normalize="imagenet"), subset=False
    )
    assert imagenet.input_spec.mean == pytest.approx((0.485, 0.456, 0.406))
    images, labels = batches(bundle.train_loader(seed=0))
    assert images.shape == (len(bundle.train), 3, 12, 10)
    # Red cats, green dogs, blue owls: the brightest channel names the class.
    brightest = (
        (
            images * torch.tensor(bundle.input_spec.std).view(3, 1, 1)
            + torch.tensor(bundle.input_spec.mean).view(3, 1, 1)
        )
        .mean(dim=(2, 3))
        .argmax(dim=1)
    )
    assert torch.equal(brightest, labels)


def test_imagefolder_official_splits_and_conversion(tmp_path: Path):
    write_pngs(tmp_path / "train", {"cat": 6, "dog": 6, "owl": 6})
    write_pngs(tmp_path / "test", {"cat": 2, "owl": 3})  # a test folder may lack a class
    bundle = build_data(
        DataConfig(dataset="imagefolder", root=tmp_path, image_size=8, channels=1), subset=False
    )
    assert bundle.official_test and bundle.summary()["test_split"] == "official"
    assert len(bundle.test) == 5 and sorted(bundle.test.labels.tolist()) == [0, 0, 2, 2, 2]
    assert len(bundle.train) + len(bundle.val) == 18
    assert bundle.test[0][0].shape == (1, 8, 8)
    assert len(bundle.input_spec.mean) == 1

    student = build_data(DataConfig(dataset="imagefolder", root=tmp_path, classes=[2, 0]))
    assert student.class_names == ["owl", "cat"]
    assert sorted(student.test.labels.tolist()) == [0, 0, 0, 1, 1]


def test_imagefolder_val_folder_counts_as_test(tmp_path: Path):
    write_pngs(tmp_path / "train", {"cat": 4, "dog": 4})
    write_pngs(tmp_path / "val", {"cat": 1, "dog": 1})
    bundle = build_data(DataConfig(dataset="imagefolder", root=tmp_path))
    assert bundle.official_test and len(bundle.test) == 2


def test_imagefolder_class_id_out_of_range(tmp_path: Path):
    write_pngs(tmp_path, {"cat": 3, "dog": 3})
    with pytest.raises(EdgekdError, match=r"data\.classes: class id 5 .*0\.\.1"):
        build_data(DataConfig(dataset="imagefolder", root=tmp_path, classes=[0, 5]))


def test_imagefolder_without_images_is_an_error(tmp_path: Path):
    with pytest.raises(EdgekdError, match=r"data\.root"):
        build_data(DataConfig(dataset="imagefolder", root=tmp_path))


# ------------------------------------------------------------------------------- torchvision data sets
def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format MNIST ships in: magic (uint8, ndim), big-endian sizes, raw bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, folder: str, train_count: int, test_count: int) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for prefix, count in (("train", train_count), ("t10k", test_count)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.randint(0, 256, (count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)


@pytest.mark.parametrize(("dataset", "folder"), [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_like_sets_read_from_disk(tmp_path: Path, dataset: str, folder: str):
    write_fake_mnist(tmp_path, folder, train_count=60, test_count=20)
    bundle = build_data(DataConfig(dataset=dataset, root=tmp_path, image_size=14), subset=False)
    assert bundle.official_test
    assert len(bundle.test) == 20 and len(bundle.train) + len(bundle.val) == 60
    assert len(bundle.val) == 10  # one of the six images of each class
    assert bundle.num_classes == 10 and len(bundle.class_names) == 10
    assert bundle.train[0][0].shape == (1, 14, 14)
    assert len(bundle.input_spec.mean) == 1 and bundle.input_spec.mean[0] == pytest.approx(
        0.1307 if dataset == "mnist" else 0.2860
    )
    student = build_data(DataConfig(dataset=dataset, root=tmp_path, classes=[4, 1], channels=3))
    assert student.train[0][0].shape == (3, 28, 28)
    assert sorted(set(student.test.labels.tolist())) == [0, 1] and len(student.test) == 4


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "mnist", "fashionmnist"])
def test_missing_torchvision_set_names_root_and_download(tmp_path: Path, dataset: str):
    with pytest.raises(EdgekdError) as info:
        build_data(DataConfig(dataset=dataset, root=tmp_path))
    message = str(info.value)
    assert message.startswith("data.root:") and str(tmp_path) in message and "download: true" in message
    assert "\n" not in message


def test_teacher_classes_fix_the_teachers_view_and_the_label_relation():
    from edgekd.config.data import DataConfig
    from edgekd.data import DataPlan

    cross = DataPlan(DataConfig(classes=[5, 6, 7, 8, 9]), teacher_classes=[0, 1, 2, 3, 4])
    teacher = cross.teacher()
    assert cross.relation == "disjoint" and cross.teacher_positions() is None
    assert teacher.num_classes == 5 and teacher.class_ids == [0, 1, 2, 3, 4]
    labels = cross.source.train_pool.labels
    assert set(labels[teacher.train.indices]) == {0, 1, 2, 3, 4}  # the teacher never sees a student class
    summary = cross.student(0).summary()
    assert summary["teacher_trained_on_student_images"] is False and summary["label_relation"] == "disjoint"

    subset = DataPlan(DataConfig(classes=[3, 1]), teacher_classes=[1, 2, 3])
    assert subset.relation == "subset" and subset.teacher_positions() == (2, 0)
    assert DataPlan(DataConfig()).relation == "same"


# ------------------------------------------------------------------------------------------ augmentation
def test_resized_crop_flip_crops_a_region_of_the_allowed_area_and_ratio_and_keeps_the_size():
    from edgekd.data.transforms import RESIZED_CROP_RATIO, make_augmentation, resized_crop_box

    generator = torch.Generator().manual_seed(0)
    areas, ratios = [], []
    for _ in range(300):
        top, left, height, width = resized_crop_box(224, 224, generator)
        assert 0 <= top <= 224 - height and 0 <= left <= 224 - width
        areas.append(height * width / 224**2)
        ratios.append(width / height)
    assert min(areas) >= 0.07 and max(areas) <= 1.0 and max(areas) - min(areas) > 0.5  # 8-100 % of the area
    low, high = RESIZED_CROP_RATIO
    assert low * 0.95 <= min(ratios) and max(ratios) <= high * 1.05
    # an 8 x 200 strip: no draw fits (any region of >= 8 % of its area at ratio <= 4/3 is taller than 8), so
    # the whole height, cut centrally to the widest allowed ratio
    assert resized_crop_box(8, 200, torch.Generator().manual_seed(0)) == (0, 94, 8, 11)
    augment = make_augmentation("resized_crop_flip")
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).view(3, 32, 32)
    first = augment(image, torch.Generator().manual_seed(1))
    assert first.shape == image.shape
    assert torch.equal(first, augment(image, torch.Generator().manual_seed(1)))  # seeded: repeatable
    assert not torch.equal(first, augment(image, torch.Generator().manual_seed(2)))
