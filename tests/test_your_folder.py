"""A user's folder and a teacher trained with plain torchvision code: the README's walk-through followed
literally, and the pieces it rests on (a plain state_dict as teacher.checkpoint, the channels read from the
teacher, the small-image stem, model_args conflicts as one line)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models import create_model
from edgekd.train.checkpoint import checkpoint_input_channels, fitting_state

ROOT = Path(__file__).resolve().parents[1]


def hand_adapted_resnet18(num_classes: int, channels: int) -> nn.Module:
    """What a user writes: torchvision's ResNet-18 with a 3x3 stride-1 first convolution and no max-pool."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model.eval()


@pytest.mark.parametrize("channels", [1, 3])
def test_a_plain_state_dict_of_a_hand_adapted_resnet_loads_as_the_teacher(tmp_path, channels):
    torch.manual_seed(0)
    plain = hand_adapted_resnet18(7, channels)
    path = tmp_path / "teacher.pt"
    torch.save(plain.state_dict(), path)  # keys conv1.weight ... fc.weight: no edgekd layout
    model = create_model("torchvision:resnet18", 7, channels, stem="small").eval()
    model.load_state_dict(fitting_state(model, path, "teacher.checkpoint", "torchvision:resnet18"))
    images = torch.randn(2, channels, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(images), plain(images))
    with torch.device("meta"):
        skeleton = create_model("torchvision:resnet18", 1, 3)
    assert checkpoint_input_channels(skeleton, path, "teacher.checkpoint") == channels


def test_a_3x3_checkpoint_against_the_imagenet_stem_says_which_option_to_set(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save(hand_adapted_resnet18(5, 3).state_dict(), path)
    model = create_model("torchvision:resnet18", 5, 3)
    with pytest.raises(EdgekdError) as raised:
        fitting_state(model, path, "teacher.checkpoint", "torchvision:resnet18")
    message = str(raised.value)
    assert "body.conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)" in message
    assert "set `teacher.model_args: {stem: small}`" in message and "\n" not in message


def test_other_channels_keep_torchvisions_stem_shape():
    model = create_model("torchvision:mobilenet_v3_small", 4, 1)
    first = model.body.features[0][0]
    assert (first.in_channels, first.kernel_size, first.stride) == (1, (3, 3), (2, 2))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 4)
    assert model.taps  # the probe runs on 1-channel images too


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("torchvision:resnet18", {"stem": "tiny"}, "model_args.stem: 'tiny' is not allowed; give imagenet"),
        ("torchvision:vit_b_16", {"stem": "small"}, "model_args.stem: 'small' is not available"),
        ("torchvision:resnet18", {"weights": "DEFAULT"}, "model_args.weights: not allowed"),
    ],
)
def test_torchvision_model_args_are_one_line_errors(name, kwargs, message):
    with pytest.raises(EdgekdError, match=message) as raised:
        create_model(name, 10, 3, **kwargs)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ({"in_channels": 1}, "'in_channels' is set by edgekd from the images' channels"),
        ({"num_classes": 3}, "'num_classes' is set by edgekd from the data's classes"),
        ({"stem": "tiny"}, "model_args.stem: 'tiny' is not allowed"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_model_args_conflicts_in_a_recipe_exit_2_with_one_line(
    write_recipe, cli_processes, model_args, message
):
    path = write_recipe(
        teacher={"model": "torchvision:resnet18", "model_args": model_args, "train": {"epochs": 1}}
    )
    result = cli_processes.run(["validate", str(path)], path.parent)
    stderr = result["stderr"]
    assert result["exit"] == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert message in stderr and "teacher." in stderr


# ------------------------------------------------------------------------------------ the walk-through
def walkthrough_blocks() -> dict[str, str]:
    """The README's walk-through: each fenced block after a `<!-- walkthrough: NAME -->` marker."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- walkthrough: (\S+) -->\n```\w*\n(.*?)```", readme, flags=re.DOTALL)
    return dict(blocks)


def write_small_folder(root: Path, classes: int = 4, train: int = 12, val: int = 4, size: int = 12) -> None:
    """A grayscale ImageFolder like a user's, small enough for a test: class k is a bright band at row k."""
    rng = np.random.default_rng(0)
    names = ["ant", "bee", "cat", "dog", "elk"][:classes]
    for split, count in (("train", train), ("val", val)):
        for label, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
                pixels[2 * label : 2 * label + 3] = 220
                Image.fromarray(pixels, mode="L").save(folder / f"{index:03d}.png")


def test_the_readme_walkthrough_has_its_three_blocks():
    blocks = walkthrough_blocks()
    assert set(blocks) == {"train_teacher.py", "my_recipe.yaml", "commands"}
    assert "edgekd" not in blocks["train_teacher.py"]  # the teacher is trained without edgekd


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    blocks = walkthrough_blocks()
    write_small_folder(tmp_path / "my_images")
    (tmp_path / "train_teacher.py").write_text(blocks["train_teacher.py"])
    (tmp_path / "my_recipe.yaml").write_text(blocks["my_recipe.yaml"])
    run = subprocess.run(
        [sys.executable, "train_teacher.py"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr
    outputs = []
    for line in blocks["commands"].strip().splitlines():
        command = shlex.split(line)
        assert command[0] == "edgekd"
        done = subprocess.run(
            [sys.executable, "-m", "edgekd", *command[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout)
    validated, built = outputs
    assert "4 classes (ant, bee, cat, dog)" in validated
    assert (
        "12x12 (the first training image's), 1 channel (from teacher.checkpoint's first convolution"
        in validated
    )
    assert "mean [0.5] std [0.5]" in validated and "16 test from val/" in validated

    run_dir = tmp_path / "runs" / "my_images"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    shipped = metrics["shipped"]["model"]
    assert f"ship: {shipped} (" in built
    onnx_int8 = run_dir / "artifacts" / f"{shipped}_onnx_int8.onnx"
    assert f"artifacts/{onnx_int8.name}" in built
    import onnx

    metadata = {item.key: item.value for item in onnx.load(str(onnx_int8)).metadata_props}
    assert json.loads(metadata["input_shape"]) == ["N", 1, 12, 12]
    assert json.loads(metadata["mean"]) == [0.5] and json.loads(metadata["std"]) == [0.5]
    assert json.loads(metadata["class_names"]) == ["ant", "bee", "cat", "dog"]
    deploy = (run_dir / "DEPLOY.md").read_text()
    assert "grayscale" in deploy and "classes in order: ant, bee, cat, dog" in deploy
