"""The model zoo: sizes, forward shapes, feature taps, profiling and budget fitting."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models import (
    FAMILIES,
    BudgetFit,
    available_models,
    count_flops,
    count_params,
    create_model,
    family_members,
    fit_to_budget,
    get_taps,
)


def meta_params(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> int:
    """Parameter count of a zoo model built on the meta device (no memory, no initialization)."""
    with torch.device("meta"):
        return count_params(create_model(name, num_classes, in_channels, **kwargs))


def run_with_hooks(
    model: nn.Module, paths: list[str], x: torch.Tensor, read_input: bool
) -> list[torch.Tensor]:
    """Forward ``x`` and return, per path, the hooked module's first input (or its output)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(path: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured[path] = (inputs[0] if read_input else output).detach().clone()

        return hook

    handles = [model.get_submodule(path).register_forward_hook(keep(path)) for path in paths]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [captured[path] for path in paths]


# ------------------------------------------------------------------------------------------ sizes
PUBLISHED_PARAMS_AT_100_CLASSES = {
    # CRD / RepDistiller tables (CIFAR-100)
    "resnet20": 0.28e6,
    "resnet32": 0.47e6,
    "resnet56": 0.86e6,
    "resnet110": 1.74e6,
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "wrn_16_2": 0.70e6,
    "wrn_40_1": 0.57e6,
    "wrn_40_2": 2.25e6,
    "wrn_16_4": 2.75e6,
    "wrn_28_4": 5.9e6,
}


@pytest.mark.parametrize(("name", "published"), PUBLISHED_PARAMS_AT_100_CLASSES.items())
def test_parameter_counts_match_published_numbers(name: str, published: float) -> None:
    assert meta_params(name, 100) == pytest.approx(published, rel=0.02)


def test_resnet_width_scales_the_stages() -> None:
    model = create_model("resnet8", 10, width=8)
    assert [model.get_submodule(tap)[-1].conv2.out_channels for tap in model.taps] == [8, 16, 32]
    assert (
        meta_params("resnet8", 10, width=32)
        > meta_params("resnet8", 10)
        > meta_params("resnet8", 10, width=8)
    )


def test_mobilenetv2_width_mult_scales_the_network() -> None:
    assert meta_params("mobilenetv2", 10, width_mult=0.5) < meta_params("mobilenetv2", 10)


# ------------------------------------------------------------------------------ forward and taps
# (model name, model_args, in_channels, image size)
FORWARD_CASES = [
    ("resnet8", {}, 1, 8),
    ("resnet20", {"width": 8}, 3, 32),
    ("resnet8x4", {}, 3, 16),
    ("wrn_10_1", {}, 1, 8),
    ("wrn_16_2", {"dropout": 0.3}, 3, 32),
    ("mobilenetv2", {"width_mult": 0.25}, 1, 8),
    ("mobilenetv2", {"width_mult": 0.5}, 3, 32),
    ("torchvision:resnet18", {}, 3, 64),
    ("torchvision:mobilenet_v2", {}, 3, 64),
]
CASE_IDS = [f"{name}-{channels}x{size}x{size}" for name, _, channels, size in FORWARD_CASES]


@pytest.fixture(scope="module", params=FORWARD_CASES, ids=CASE_IDS)
def built(request: pytest.FixtureRequest) -> tuple[nn.Module, torch.Tensor]:
    name, model_args, in_channels, size = request.param
    torch.manual_seed(0)
    model = create_model(name, 7, in_channels, **model_args).eval()
    return model, torch.randn(2, in_channels, size, size)


def test_forward_gives_one_logit_per_class(built: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = built
    with torch.no_grad():
        assert model(x).shape == (2, 7)


def test_classifier_is_the_final_linear_layer(built: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = built
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.out_features == 7
    embedding = run_with_hooks(model, ["classifier"], x, read_input=True)[0]
    assert embedding.shape == (2, model.classifier.in_features)


def test_taps_are_feature_maps_that_shrink(built: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = built
    taps = get_taps(model)
    assert len(taps) >= 3
    features = run_with_hooks(model, taps, x, read_input=False)
    assert all(feature.dim() == 4 and feature.shape[0] == 2 for feature in features)
    sizes = [feature.shape[-2:] for feature in features]
    assert all(deep[0] <= shallow[0] and deep[1] <= shallow[1] for shallow, deep in pairwise(sizes))
    assert len(model.preact_taps) == len(model.preact_bn) == len(taps)


def test_preact_taps_see_the_pre_relu_stage_outputs(built: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = built
    name = model.zoo_name
    if not name.startswith(("resnet", "wrn")):  # no ReLU module sees their stage outputs
        assert not any(model.preact_taps) and not any(model.preact_bn)
        return
    assert all(path is not None for path in model.preact_taps)
    features = run_with_hooks(model, model.taps, x, read_input=False)
    preacts = run_with_hooks(model, model.preact_taps, x, read_input=True)
    for path, bn_path, feature, preact in zip(
        model.preact_taps, model.preact_bn, features, preacts, strict=True
    ):
        relu = model.get_submodule(path)
        assert isinstance(relu, nn.ReLU) and not relu.inplace
        bn = model.get_submodule(bn_path)
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == feature.shape[1]
        assert preact.shape == feature.shape
        assert (preact < 0).any()
        if name.startswith("resnet"):
            assert (feature >= 0).all()
            assert torch.equal(torch.relu(preact), feature)


def test_mobilenetv2_taps_sit_at_strides_1_2_4_8() -> None:
    model = create_model("mobilenetv2", 10, width_mult=0.35).eval()
    features = run_with_hooks(model, model.taps, torch.randn(1, 3, 32, 32), read_input=False)
    assert [feature.shape[-1] for feature in features] == [32, 16, 8, 4]


def test_get_taps_refuses_a_model_without_taps() -> None:
    with pytest.raises(EdgekdError, match="no feature taps"):
        get_taps(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_same_seed_gives_identical_weights() -> None:
    for name in ("resnet8", "wrn_10_2", "mobilenetv2", "torchvision:resnet18"):
        torch.manual_seed(3)
        first = create_model(name, 10).state_dict()
        torch.manual_seed(3)
        second = create_model(name, 10).state_dict()
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first), name


def test_zoo_models_initialize_convolutions_and_batchnorms() -> None:
    model = create_model("resnet20", 10)
    batchnorms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in batchnorms)
    conv = model.layer3[0].conv1  # kaiming fan_out: std = sqrt(2 / (out_channels * 3 * 3))
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


@pytest.mark.parametrize(
    ("name", "model_args"), [("resnet8", {}), ("wrn_10_1", {}), ("mobilenetv2", {"width_mult": 0.25})]
)
def test_zoo_families_export_to_onnx(name: str, model_args: dict[str, Any]) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = create_model(name, 10, 1, **model_args).eval()
    x = torch.randn(1, 1, 8, 8)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(onnx_logits), model(x), atol=1e-4)


# ---------------------------------------------------------------------------------- registry
def test_available_models_shows_patterns() -> None:
    names = available_models()
    assert {"mobilenetv2", "resnet<depth>", "wrn_<depth>_<widen>", "torchvision:<name>"} <= set(names)


@pytest.mark.parametrize(
    ("name", "kwargs", "in_channels", "message"),
    [
        ("resnet9000x", {}, 3, r"wrn_<depth>_<widen>.*|torchvision:<name>"),
        ("wrn_15_2", {}, 3, r"6n\+4"),
        ("resnet15", {}, 3, r"6n\+2"),
        ("resnet20", {"depth_mult": 2}, 3, r"model_args\.depth_mult.*options: width, stem_width"),
        ("resnet20", {"width": 0}, 3, r"model_args\.width"),
        ("mobilenetv2", {"width_mult": -1}, 3, r"model_args\.width_mult"),
        ("wrn_16_2", {"dropout": 1.5}, 3, r"model_args\.dropout"),
        ("torchvision:resnet18", {"stem": "small "}, 1, r"model_args\.stem: 'small ' is not allowed"),
        ("torchvision:not_a_net", {}, 3, r"unknown.*resnet18"),
        ("torchvision:squeezenet1_0", {}, 3, r"no final nn\.Linear"),
        ("resnet20", {}, 0, r"in_channels"),
        # absurd sizes are refused by their constructors, before a single layer is built
        ("resnet6000002", {}, 3, r"6n\+2 from 8 to 2402"),
        ("wrn_16_10000000", {}, 3, r"widen factor must be a whole number from 1 to 128"),
        ("wrn_6000004_2", {}, 3, r"6n\+4 from 10 to 1000"),
        ("resnet8", {"width": 10_000_000}, 3, r"model_args\.width: 10000000 is not allowed.*8,192"),
        ("resnet8", {"stem_width": 10_000_000}, 3, r"model_args\.stem_width"),
        ("mobilenetv2", {"width_mult": 1e9}, 3, r"model_args\.width_mult.*<= 32"),
        ("mobilenetv2", {"width_mult": float("inf")}, 3, r"model_args\.width_mult"),
        ("resnet" + "9" * 5000, {}, 3, r"\(5,008 chars\) is unknown"),  # no int() of 5000 digits
    ],
)
def test_bad_model_requests_raise_one_line_errors(
    name: str, kwargs: dict[str, Any], in_channels: int, message: str
) -> None:
    with pytest.raises(EdgekdError, match=message) as raised:
        create_model(name, 10, in_channels, **kwargs)
    assert "\n" not in str(raised.value)


def test_unknown_model_error_lists_every_pattern() -> None:
    with pytest.raises(EdgekdError) as raised:
        create_model("lenet", 10)
    for pattern in available_models():
        assert pattern in str(raised.value)


def test_torchvision_model_loads_a_plain_torchvision_state_dict() -> None:
    plain = torchvision.models.resnet18(num_classes=5).eval()
    model = create_model("torchvision:resnet18", 5).eval()
    model.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x))
    assert torch.equal(model.classifier.weight, plain.fc.weight)


# ---------------------------------------------------------------------------------- profiling
def test_count_flops_matches_a_hand_count_and_restores_modes() -> None:
    conv = nn.Conv2d(1, 4, kernel_size=3, padding=1)
    head = nn.Linear(4 * 8 * 8, 10)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head)
    model.train()
    head.eval()  # a submodule in its own mode must keep it
    conv_macs = (4 * 8 * 8) * (1 * 3 * 3)  # one multiply-add per output element and kernel tap
    linear_macs = 256 * 10
    assert count_flops(model, (1, 8, 8)) == 2 * (conv_macs + linear_macs)
    assert model.training and conv.training and not head.training


def test_count_params_counts_parameters_not_buffers() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3))
    assert count_params(model) == 2 * 3 + 3 + 3


def test_count_flops_works_on_the_meta_device() -> None:
    real = count_flops(create_model("resnet8", 10, 1), (1, 8, 8))
    with torch.device("meta"):
        meta_model = create_model("resnet8", 10, 1)
    assert count_flops(meta_model, (1, 8, 8)) == real > 0


# ------------------------------------------------------------------------------ budget fitting
@pytest.fixture(scope="module")
def member_params() -> dict[str, list[int]]:
    """Brute force: every member's parameter count at 10 classes and 1 channel."""
    return {
        family: [meta_params(name, 10, 1, **args) for name, args in family_members(family)]
        for family in FAMILIES
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_budget_fit_picks_the_largest_member_that_fits(
    family: str, member_params: dict[str, list[int]]
) -> None:
    counts = sorted(set(member_params[family]))
    budgets = [counts[0], counts[0] + 1, counts[len(counts) // 2] - 1, counts[-1] - 1, counts[-1], 10**9]
    members = family_members(family)
    for budget in budgets:
        fit = fit_to_budget(family, budget, 10, 1, (8, 8))
        best = max(count for count in member_params[family] if count <= budget)
        assert isinstance(fit, BudgetFit)
        assert fit.params == best <= fit.budget == budget
        assert (fit.model, fit.model_args) in members
        assert fit.candidates_considered == len(members)
        assert fit.flops > 0


def test_budget_fit_builds_what_it_reports() -> None:
    fit = fit_to_budget("resnet", 300_000, 10, 3, (32, 32))
    model = create_model(fit.model, 10, 3, **fit.model_args)
    assert count_params(model) == fit.params <= 300_000
    assert count_flops(model, (3, 32, 32)) == fit.flops


def test_budget_fit_breaks_ties_by_fewer_flops_then_shallower(monkeypatch: pytest.MonkeyPatch) -> None:
    # no real family has two members of equal size, so stub the sizes and costs
    from edgekd.models import budget as budget_module

    members = [
        ("resnet20", {"width": 8}),
        ("resnet14", {"width": 16}),
        ("resnet8", {"width": 16}),
        ("resnet8", {}),
    ]
    flops = {"resnet20": 50, "resnet14": 40, "resnet8": 40}
    monkeypatch.setitem(budget_module._FAMILY_MEMBERS, "resnet", lambda: members)
    sizes = {("resnet8", ()): 900}  # plain resnet8 is smaller than the budget's best, so it is not a tie
    monkeypatch.setattr(budget_module, "_member_params", lambda name, args, *_: sizes.get((name, args), 1000))
    monkeypatch.setattr(budget_module, "_member_flops", lambda member, *_: flops[member[0]])
    fit = fit_to_budget("resnet", 1000, 10, 1, (8, 8))
    assert (fit.model, fit.model_args, fit.params, fit.flops) == ("resnet8", {"width": 16}, 1000, 40)


@pytest.mark.parametrize("family", FAMILIES)
def test_budget_below_the_smallest_member_names_it(family: str, member_params: dict[str, list[int]]) -> None:
    smallest = min(member_params[family])
    name = family_members(family)[member_params[family].index(smallest)][0]
    with pytest.raises(
        EdgekdError, match=rf"below the smallest '{family}' member \({name}.*{smallest:,} params"
    ):
        fit_to_budget(family, smallest - 1, 10, 1, (8, 8))


def test_unknown_family_lists_the_families() -> None:
    with pytest.raises(EdgekdError, match="resnet, wrn, mobilenetv2"):
        fit_to_budget("vgg", 10**6, 10, 3, (32, 32))
    with pytest.raises(EdgekdError, match="unknown"):
        family_members("vgg")


def test_memory_footprint_counts_weights_and_every_leaf_output_without_allocating() -> None:
    from edgekd.models.memory import FLOAT_BYTES, OPTIMIZER_STATES, footprint

    def build() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten())

    measured = footprint(build, (1, 8, 8))
    assert measured.weight_bytes == (2 * 9 + 2) * FLOAT_BYTES
    assert measured.outputs_per_image == 3 * 2 * 8 * 8 * FLOAT_BYTES  # conv, relu, flatten outputs
    assert measured.largest_output_per_image == 2 * 8 * 8 * FLOAT_BYTES
    assert measured.training_bytes(10) == measured.weight_bytes * (2 + OPTIMIZER_STATES) + 10 * 1536
    # a model far larger than this machine is sized in an instant: nothing is allocated
    huge = footprint(lambda: create_model("resnet1202", 10, 3, width=4096), (3, 64, 64))
    assert huge.weight_bytes > 1 << 40
