"""timm models in the zoo (`timm:<name>`) and the timm student families: construction without weights, taps
from timm's feature_info, the replaced head, the embedding before dropout, the size grids, export parity and
a real param-budget build. Small inputs (32x32, the digits' 8x8) throughout."""

from __future__ import annotations

import json
import sys
from itertools import combinations, pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("timm")  # an optional extra; edgekd without it is tested below in a fresh process

from edgekd.bench import check_parity
from edgekd.distill.embedding import embedding_tap
from edgekd.distill.features import FeatureCapture
from edgekd.errors import EdgekdError
from edgekd.exporters import ModelIO, get_exporter
from edgekd.models import count_params, create_model, family_members, get_taps
from edgekd.models.budget import describe_grid, dominates, member_params, member_size
from edgekd.models.timm_models import TIMM_FAMILIES

SMALLEST = {family: members[0][0] for family, members in TIMM_FAMILIES.items()}


def settled(model: nn.Module, channels: int, size: int) -> nn.Module:
    """The model with BatchNorm statistics from a few random batches (an untrained network's raw statistics
    give logits too large to compare), in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(3):
            model.train()(torch.randn(8, channels, size, size))
    return model.eval()


# ------------------------------------------------------------------------------------------ construction
@pytest.mark.parametrize(
    ("name", "in_channels"),
    [("timm:resnet18", 3), ("timm:mobilenetv4_conv_small_035", 1), ("timm:efficientnet_lite0", 3)],
)
def test_a_timm_model_builds_with_its_head_for_the_classes(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, 7, in_channels).eval()
    x = torch.randn(2, in_channels, 32, 32)
    with torch.no_grad():
        logits, embedding = model(x), model.body(x)
    assert logits.shape == (2, 7)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7
    assert embedding.shape == (2, model.classifier.in_features)  # body is the network up to the head
    assert isinstance(model.body.get_classifier(), nn.Identity)  # timm's own head is gone, not doubled
    torch.testing.assert_close(logits, model.classifier(embedding))


def test_same_seed_gives_identical_weights() -> None:
    first, second = [
        (torch.manual_seed(3), create_model("timm:mobilenetv3_small_050", 5, 3))[1] for _ in range(2)
    ]
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", ["timm:mobilenetv4_conv_small_035", "timm:convnext_atto", "timm:resnet18"])
def test_taps_are_timms_feature_info_maps_with_the_declared_shapes(name: str) -> None:
    model = create_model(name, 4, 3).eval()
    info = {f"body.{entry['module']}": entry for entry in model.body.feature_info}
    taps = get_taps(model)
    assert len(taps) >= 4 and set(taps) <= set(info)
    shapes = {}
    hooks = [
        model.get_submodule(tap).register_forward_hook(
            lambda _m, _i, output, tap=tap: shapes.__setitem__(tap, output.shape)
        )
        for tap in taps
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    for tap in taps:
        reduction = info[tap]["reduction"]
        assert shapes[tap] == (2, info[tap]["num_chs"], 64 // reduction, 64 // reduction), tap
    assert len(model.preact_taps) == len(model.preact_bn) == len(taps)


def test_a_token_model_declares_no_taps() -> None:
    with torch.device("meta"):
        model = create_model("timm:vit_tiny_patch16_224", 4, 3)
    assert model.taps == []
    with pytest.raises(EdgekdError, match="declares no feature taps"):
        get_taps(model)


def test_the_embedding_is_read_before_the_head_dropout() -> None:
    torch.manual_seed(0)
    model = create_model("timm:mobilenetv4_conv_small_035", 6, 3, drop_rate=0.5).train()
    capture = FeatureCapture(model, [embedding_tap(model)])
    x = torch.randn(4, 3, 32, 32)
    model.eval()  # BatchNorm in eval mode so that only the dropout could make two passes differ
    model.head_dropout.train()
    with torch.no_grad():
        logits_a, (embedding_a,) = capture.run(x)
        logits_b, (embedding_b,) = capture.run(x)
    assert model.head_dropout.p == 0.5
    assert not torch.equal(logits_a, logits_b)  # the dropout is active...
    torch.testing.assert_close(embedding_a, embedding_b, rtol=0, atol=0)  # ...and after the embedding
    assert embedding_a.shape == (4, model.classifier.in_features)


def test_a_plain_timm_state_dict_loads_into_the_wrapper() -> None:
    import timm

    plain = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5).eval()
    model = create_model("timm:mobilenetv3_small_050", 5, 3).eval()
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))


@pytest.mark.parametrize(
    ("name", "model_args", "message"),
    [
        ("timm:mobilenetv4_conv_smal", {}, r"unknown to timm.*did you mean mobilenetv4_conv_small"),
        ("timm:resnet18", {"pretrained": True}, r"model_args\.pretrained: not allowed.*never downloads"),
        ("timm:resnet18", {"checkpoint_path": "x.pt"}, r"model_args\.checkpoint_path: not allowed"),
        ("timm:resnet18", {"drop_rate": 1.5}, r"model_args\.drop_rate"),
        ("timm:resnet18", {"no_such_option": 1}, r"model_args for 'timm:resnet18' are not accepted"),
    ],
)
def test_bad_timm_requests_raise_one_line_errors(name: str, model_args: dict, message: str) -> None:
    with pytest.raises(EdgekdError, match=message) as caught:
        create_model(name, 3, 3, **model_args)
    assert "\n" not in str(caught.value)


def test_without_timm_a_timm_name_says_pip_install_timm(tmp_path: Path) -> None:
    # A fresh interpreter in which `import timm` fails, as where the extra is not installed.
    import subprocess

    script = (
        "import sys; sys.modules['timm'] = None\n"
        "from edgekd.errors import EdgekdError\n"
        "from edgekd.models import FAMILIES, create_model\n"
        "assert 'timm_mobilenetv4' in FAMILIES\n"
        "try:\n"
        "    create_model('timm:resnet18', 3)\n"
        "except EdgekdError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "timm: models need the timm package; pip install timm"


# ------------------------------------------------------------------------------------------ families
@pytest.mark.parametrize("family", list(TIMM_FAMILIES))
def test_family_members_grow_along_the_grid(family: str) -> None:
    members = family_members(family)
    params = [member_params(member, 10, 3) for member in members]
    assert params == sorted(params) and len(set(params)) == len(params)  # listed smallest first
    sizes = [member_size(member) for member in members]
    for (a, size_a, params_a), (b, size_b, params_b) in combinations(
        zip(members, sizes, params, strict=True), 2
    ):
        # latency sizing trusts the grid: a member that dominates another must be the larger
        if dominates(size_b, size_a):
            assert params_b > params_a, (a, b)
        if dominates(size_a, size_b):
            assert params_a > params_b, (a, b)
    assert all(dominates(larger, smaller) for smaller, larger in pairwise(sizes[:3]))


def test_list_models_shows_the_timm_families_with_their_grids(cli) -> None:
    output = cli("list", "models").output
    assert "timm:<name>" in output
    for family, members in TIMM_FAMILIES.items():
        assert family in output
        for line in describe_grid(family):
            assert line in output
        for variant, _ in members:
            assert f"timm:{variant}" in output
    assert "timm:mobilenetv4_conv_small (0, 1)" in output
    assert "timm:mobilenetv4_conv_medium (1, 1)" in output


# ------------------------------------------------------------------------------------------ export
@pytest.mark.slow
@pytest.mark.parametrize("family", list(TIMM_FAMILIES))
def test_the_smallest_member_of_each_family_exports_with_parity(family: str, tmp_path: Path) -> None:
    name = SMALLEST[family]
    torch.manual_seed(0)
    model = settled(create_model(f"timm:{name}", 5, 3), 3, 32)
    io = ModelIO(3, 32, 32, (0.5,) * 3, (0.5,) * 3, tuple(f"class {k}" for k in range(5)))
    images = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()

    onnx_artifact = get_exporter("onnx").export(model, io, "fp32", tmp_path)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_artifact.path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run([io.output_name], {io.input_name: images})[0]
    assert check_parity(reference, onnx_logits, "fp32").passed

    import openvino as ov

    ov_artifact = get_exporter("openvino").export(model, io, "fp32", tmp_path)
    # this CPU would run in bf16 by default; parity with PyTorch needs f32 inference asked for explicitly
    compiled = ov.Core().compile_model(str(ov_artifact.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert check_parity(reference, compiled(images)[0], "fp32").passed


# ------------------------------------------------------------------------------------------ build
@pytest.mark.slow
def test_a_param_budget_build_sizes_a_timm_family_and_exports_it(cli, write_recipe, tmp_path: Path) -> None:
    smallest, second = (member_params(member, 10, 1) for member in family_members("timm_mobilenetv4")[:2])
    budget = (smallest + second) // 2  # only the smallest member fits
    recipe = write_recipe(
        student={"family": "timm_mobilenetv4", "budget": {"params": budget}},
        # 32x32 (the digits resized) and batches of 32: at 8x8 an ImageNet network's maps are 1x1 from its
        # third stage on, its eval-mode BatchNorm statistics do not settle in a few dozen steps and its logits
        # reach the thousands, where fp32 rounding alone exceeds the parity limit
        data={"dataset": "digits", "batch_size": 32, "image_size": 32},
        distill={"method": "kd", "baselines": []},
        train={"epochs": 2, "optimizer": {"lr": 0.05}},
        export={"targets": {"onnx": ["fp32"], "openvino": ["fp32"]}},
        benchmark={"batches": [1], "threads": 1},
    )
    result = cli("build", recipe, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    student = next(record for record in metrics["models"] if record["name"] == "kd")
    assert student["params"] == smallest <= budget and student["fits_budget"] is True
    # it learned something in 2 short epochs from scratch (chance: 10 %); 26 % on this seed
    assert student["test_acc"] > 15
    assert "mobilenetv4_conv_small_035" in json.dumps(metrics)
    model = create_model("timm:mobilenetv4_conv_small_035", 10, 1)
    assert count_params(model) == smallest
    exported = {(a["format"], a["precision"]): a for a in metrics["artifacts"]}
    for key in (("onnx", "fp32"), ("openvino", "fp32")):
        assert exported[key]["status"] == "ok", exported[key]


@pytest.mark.slow
def test_a_latency_budget_build_times_a_timm_family_and_ships_what_it_timed(
    cli, write_recipe, tmp_path
) -> None:
    """A latency limit no CPU misses (10 s per image) beside a parameter limit only the smallest member meets:
    the member is chosen by timing its exported OpenVINO artifact, whatever this machine's speed."""
    smallest, second = (member_params(member, 10, 1) for member in family_members("timm_mobilenetv4")[:2])
    latency = {"limit_ms": 10_000, "backend": "openvino", "precision": "fp32", "threads": 1}
    recipe = write_recipe(
        student={
            "family": "timm_mobilenetv4",
            "budget": {"params": (smallest + second) // 2, "latency": latency},
        },
        data={"dataset": "digits", "batch_size": 32, "image_size": 32},  # 32x32: see the param-budget build
        distill={"method": "kd", "baselines": []},
        train={
            "epochs": 2,
            "optimizer": {"lr": 0.05},
        },  # as the param-budget build: settled enough for parity
        export={"targets": {"openvino": ["fp32"]}},
        benchmark={"batches": [1], "threads": 1, "min_iters": 5, "min_time_s": 0.1},
    )
    result = cli("build", recipe, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    sizing = metrics["student_choice"]["sizing"]
    chosen = next(row for row in sizing["candidates"] if row["member"] == sizing["chosen"])
    assert "mobilenetv4_conv_small_035" in json.dumps(chosen) and chosen["latency_ms"] is not None
    check = metrics["budget_check"]
    assert check["fits"] is True and check["latency"]["measured_ms"] <= 10_000


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["litert", "executorch"])
@pytest.mark.parametrize("family", list(TIMM_FAMILIES))
def test_the_smallest_member_of_each_family_runs_on_the_phone_runtimes(family, runtime, tmp_path) -> None:
    """FP32 on LiteRT and ExecuTorch (skipped, naming the extra, where it is not installed)."""
    from edge_runtime_helpers import skip_without

    from edgekd.bench.runners import runner_for
    from edgekd.formats import FORMATS

    entry = FORMATS[runtime]
    if skip_without(entry).args[0]:
        pytest.skip(f"needs the {runtime} extra: {entry.install}")
    torch.manual_seed(0)
    model = settled(create_model(f"timm:{SMALLEST[family]}", 5, 3), 3, 32)
    io = ModelIO(3, 32, 32, (0.5,) * 3, (0.5,) * 3, tuple(f"class {k}" for k in range(5)))
    images = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    artifact = get_exporter(runtime).export(model, io, "fp32", tmp_path)
    runner = runner_for(artifact.path, threads=1)
    runner.load()
    assert check_parity(reference, runner.run(images), "fp32").passed
