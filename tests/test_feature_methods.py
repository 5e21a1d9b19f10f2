"""Feature distillation: taps and hooks, connectors, the OFD/SKD maths, and short training runs per method."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import edgekd.distill.methods  # noqa: F401  (registers every method)
from edgekd.config.train import TrainConfig
from edgekd.distill import DistillContext, get_method, method_names
from edgekd.distill.features import FeatureCapture, TapOptions, probe_shapes, resolve_taps
from edgekd.distill.methods.fitnet import hint_stage_epochs
from edgekd.distill.methods.ofd import bn_margin, partial_l2
from edgekd.distill.methods.rkd import angles
from edgekd.distill.methods.skd import spectral_norm, transmitting_matrix
from edgekd.distill.registry import distill_section_model
from edgekd.errors import EdgekdError
from edgekd.models import create_model

FEATURE_METHODS = ["fitnet", "at", "rkd", "ofd", "skd"]
DIGITS_SHAPE = (1, 8, 8)


# ------------------------------------------------------------------------------------------- fixtures
# `digits` and `teacher` (a briefly trained resnet20: real features) come from conftest.py
def make_distiller(method: str, teacher: nn.Module, num_classes: int = 10, class_ids=None, **options):
    torch.manual_seed(1)
    student = create_model("resnet8", num_classes, 1, width=8)
    entry = get_method(method)
    ids = tuple(range(num_classes)) if class_ids is None else tuple(class_ids)
    context = DistillContext(num_classes, ids, input_shape=DIGITS_SHAPE)
    return entry.distiller(student, teacher, entry.options(**options), context)


def fixed_batches(x, y, count=4, size=64):
    return [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(count)]


def train(distiller, batches, steps=16, lr=0.05) -> list[float]:
    """Plain SGD over a fixed cycle of batches: the first and last cycles see the same data."""
    torch.manual_seed(2)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=lr, momentum=0.9)
    distiller.train()
    losses = []
    for step in range(steps):
        images, labels = batches[step % len(batches)]
        _, terms = distiller.forward_train(images, labels)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def falls(losses: list[float], cycle: int = 4) -> bool:
    return sum(losses[-cycle:]) < 0.95 * sum(losses[:cycle])


# ------------------------------------------------------------------------------------------- OFD maths
def test_ofd_margin_matches_the_closed_form_by_hand():
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 0.1, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 1.0, 0.5, 0.0]))

    def by_hand(mean, std):  # E[x | x < 0] for x ~ N(mean, std), with erf for the normal CDF
        r = mean / std
        pdf = math.exp(-r * r / 2) / math.sqrt(2 * math.pi)
        cdf_neg = 0.5 * (1 + math.erf(-r / math.sqrt(2)))
        return -3 * std if cdf_neg < 1e-3 else mean - std * pdf / cdf_neg

    expected = [by_hand(0.0, 1.0), by_hand(-1.0, 2.0), by_hand(1.0, 0.5), -0.3, by_hand(0.0, 1.0)]
    got = bn_margin(bn).tolist()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got[0] == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-5)  # half-normal mean, N(0, 1)
    assert got[3] == pytest.approx(-0.3)  # P(x < 0) = 3e-7: the -3 std fallback
    # the conditional mean itself, by numerical integration for N(-1, 2)
    x = torch.linspace(-30, 0, 300_001, dtype=torch.float64)
    density = torch.exp(-0.5 * ((x + 1) / 2) ** 2)
    assert (x * density).sum() / density.sum() == pytest.approx(got[1], rel=1e-4)


def test_partial_l2_skips_where_student_below_a_non_positive_target():
    student = torch.tensor([-2.0, 0.5, -1.0, 1.0, -3.0, -0.5], requires_grad=True)
    target = torch.tensor([-1.0, -1.0, 0.5, 0.5, 0.0, -0.2])
    loss = partial_l2(student, target)
    # counted: (0.5 + 1)^2 (s > t), (-1 - 0.5)^2 (t > 0), (1 - 0.5)^2 (both); the rest are skipped
    assert loss.item() == pytest.approx(2.25 + 2.25 + 0.25)
    loss.backward()
    assert student.grad.tolist() == pytest.approx([0.0, 3.0, -3.0, 1.0, 0.0, 0.0])


# ------------------------------------------------------------------------------------------- SKD maths
def test_spectral_norm_matches_the_exact_norm_and_has_gradient():
    torch.manual_seed(0)
    matrices = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    sigma = spectral_norm(matrices, iterations=100)
    exact = torch.linalg.matrix_norm(matrices.detach(), ord=2)
    assert torch.allclose(sigma.detach(), exact, rtol=1e-8)
    sigma.sum().backward()
    u, _, vh = torch.linalg.svd(matrices.detach())
    assert matrices.grad.abs().sum() > 0
    assert torch.allclose(matrices.grad, u[:, :, :1] @ vh[:, :1, :], atol=1e-6)  # d sigma / dA = u v^T
    assert torch.allclose(spectral_norm(matrices.detach(), iterations=0), exact)


@pytest.mark.parametrize("shape", [(64, 16, 32), (64, 32, 16)])
def test_skds_default_spectral_norm_gradient_is_the_exact_one(shape):
    # Random matrices have close top singular values, where 20 power-iteration steps left the gradient ~5 %
    # off (the old default); the default must match the exact gradient within 1e-3 (float32, as trained).
    torch.manual_seed(0)
    matrices = torch.randn(*shape, requires_grad=True)
    (ours,) = torch.autograd.grad(spectral_norm(matrices).sum(), matrices)
    exact_matrices = matrices.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(torch.linalg.matrix_norm(exact_matrices, ord=2).sum(), exact_matrices)
    assert (ours.double() - exact).abs().max() < 1e-3
    sigma = spectral_norm(matrices.detach())
    assert torch.allclose(sigma.double(), torch.linalg.matrix_norm(exact_matrices.detach(), ord=2), rtol=1e-5)
    # and the approximation it replaced is measurably off on the same matrices: the test can fail
    (approximate,) = torch.autograd.grad(spectral_norm(matrices, iterations=20).sum(), matrices)
    assert (approximate.double() - exact).abs().max() > 1e-2


def test_transmitting_matrix_pools_the_shallow_map_and_divides_by_positions():
    shallow = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    deep = torch.full((1, 1, 1, 1), 2.0)
    assert transmitting_matrix(shallow, deep).item() == pytest.approx(2.5 * 2.0)
    shallow, deep = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    expected = torch.einsum("bip,bjp->bij", shallow.flatten(2), deep.flatten(2)) / 16
    assert torch.allclose(transmitting_matrix(shallow, deep), expected, atol=1e-6)


def test_skd_spectral_term_sends_gradient_to_the_student(teacher, digits):
    distiller = make_distiller("skd", teacher, fm_scale=0.0)
    images, labels = digits[0][:32], digits[1][:32]
    _, terms = distiller.forward_train(images, labels)
    assert terms["fm"].item() == 0.0 and terms["tm"].item() > 0
    terms["tm"].backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0  # the reference's no_grad version gives none


def test_rkd_angles_match_explicit_differences():
    torch.manual_seed(0)
    embeddings = torch.randn(5, 3, dtype=torch.float64)
    differences = nn.functional.normalize(embeddings[None, :, :] - embeddings[:, None, :], dim=2)  # [j, i]
    expected = torch.einsum("jid,jkd->jik", differences, differences)
    assert torch.allclose(angles(embeddings), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------- taps
TAP_SHAPES = [
    ("resnet8", {"width": 8}, (1, 8, 8), [(8, 8, 8), (16, 4, 4), (32, 2, 2)]),
    ("wrn_16_2", {}, (1, 8, 8), [(32, 8, 8), (64, 4, 4), (128, 2, 2)]),
    ("mobilenetv2", {"width_mult": 0.25}, (1, 8, 8), [(8, 8, 8), (8, 4, 4), (24, 2, 2), (80, 1, 1)]),
    ("torchvision:resnet18", {}, (3, 32, 32), [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]),
]


@pytest.mark.parametrize(("name", "args", "shape", "expected"), TAP_SHAPES, ids=[t[0] for t in TAP_SHAPES])
def test_hooks_capture_every_tap_of_every_family(name, args, shape, expected):
    torch.manual_seed(0)
    model = create_model(name, 10, shape[0], **args)
    for preact in (False, True):
        taps = resolve_taps(model, None, preact=preact, role="student", where="test")
        shapes = probe_shapes(model, taps, shape, role="student", where="test")
        assert [(s.channels, s.height, s.width) for s in shapes] == expected
        model.train()
        capture = FeatureCapture(model, taps)
        for _ in range(2):  # repeated forwards give fresh features of the batch's size
            _, features = capture.run(torch.randn(2, *shape))
            assert [tuple(f.shape) for f in features] == [(2, *e) for e in expected]
        assert model.training  # the dry pass restored train mode
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2"])
def test_preactivation_capture_reads_the_relu_input(name):
    torch.manual_seed(0)
    model = create_model(name, 10, 1).train()
    preact = resolve_taps(model, [0, 1, 2], preact=True, role="student", where="test")
    outputs = resolve_taps(model, [0, 1, 2], preact=False, role="student", where="test")
    assert all(tap.read == "input" and tap.bn_path for tap in preact)
    _, features = FeatureCapture(model, preact + outputs).run(torch.randn(4, 1, 8, 8))
    for before, after in zip(features[:3], features[3:], strict=True):
        assert before.shape == after.shape and before.min() < 0
        if name == "resnet8":  # a CIFAR ResNet's stage output is that very ReLU's output
            assert torch.equal(torch.relu(before), after)


def test_persistent_capture_overwrites_and_removes_its_hooks():
    model = create_model("resnet8", 10, 1, width=8)
    taps = resolve_taps(model, ["layer3"], preact=False, role="student", where="test")
    capture = FeatureCapture(model, taps)
    with capture:
        model(torch.randn(3, 1, 8, 8))
        model(torch.randn(5, 1, 8, 8))
        assert capture.collect()[0].shape[0] == 5
    assert not model.layer3._forward_hooks


def test_unknown_tap_lists_the_available_ones(teacher):
    for bad in (["layer9"], [7]):
        with pytest.raises(EdgekdError, match=r"no tap .*available: 0=layer1, 1=layer2, 2=layer3") as error:
            make_distiller("ofd", teacher, teacher_taps=bad)
        assert "\n" not in str(error.value) and "distill.ofd.teacher_taps" in str(error.value)


def test_incompatible_taps_give_clear_errors():
    teacher = create_model("resnet8", 10, 3)
    student = create_model("torchvision:resnet18", 10, 3)
    entry = get_method("ofd")
    context = DistillContext(10, tuple(range(10)), input_shape=(3, 16, 16))
    # the teacher's 16x16 first stage has no student tap of that size (resnet18: 4, 2, 1, 1)
    with pytest.raises(EdgekdError, match=r"no student tap has the height and width of a teacher tap"):
        entry.distiller(student, teacher, entry.options(teacher_taps=[0]), context)
    with pytest.raises(EdgekdError, match=r"'classifier' gives \(1, 10\), not a \(batch, channels"):
        options = entry.options(teacher_taps=[-1], student_taps=["classifier"])
        entry.distiller(student, teacher, options, context)
    with pytest.raises(EdgekdError, match="input shape"):
        entry.distiller(student, teacher, entry.options(), DistillContext(10, tuple(range(10))))


def test_explicit_pairs_of_other_sizes_are_resized(teacher, digits):
    distiller = make_distiller("skd", teacher, teacher_taps=[0, 2], student_taps=["layer2", "layer3"])
    assert [(p.teacher.name, p.student.name) for p in distiller.pairs] == [
        ("layer1", "layer2"),
        ("layer3", "layer3"),
    ]
    _, terms = distiller.forward_train(digits[0][:16], digits[1][:16])
    assert all(torch.isfinite(value) for value in terms.values())


def test_attention_transfer_skips_tiny_maps_by_default(teacher):
    distiller = make_distiller("at", teacher)  # digits: maps of 8x8, 4x4 and 2x2
    assert [pair.teacher.name for pair in distiller.pairs] == ["layer1", "layer2"]
    explicit = make_distiller("at", teacher, teacher_taps=[2])
    assert [pair.teacher_shape.size for pair in explicit.pairs] == [(2, 2)]


def test_tap_options_validate_pairing():
    TapOptions(teacher_taps=[1, "layer3"], student_taps=["layer2", -1])
    with pytest.raises(ValidationError, match="give teacher_taps too"):
        TapOptions(student_taps=[0])
    with pytest.raises(ValidationError, match="cannot pair"):
        TapOptions(teacher_taps=[0, 1], student_taps=[0])
    section = distill_section_model()(method="skd", skd={"beta": 3.0, "teacher_taps": [1, 2]})
    assert section.skd.beta == 3.0


# ------------------------------------------------------------------------------------------- connectors
@pytest.mark.parametrize("method", ["ofd", "skd", "fitnet"])
def test_connectors_belong_to_the_distiller_not_the_student(method, teacher):
    distiller = make_distiller(method, teacher, **({"task_hint_weight": 1.0} if method == "fitnet" else {}))
    fresh = create_model("resnet8", 10, 1, width=8)
    assert set(distiller.student.state_dict()) == set(fresh.state_dict())
    student_ids = {id(p) for p in distiller.student.parameters()}
    extra = [p for p in distiller.parameters() if id(p) not in student_ids]
    assert extra and distiller.extra_parameter_count() == sum(p.numel() for p in extra)
    assert not any(key.startswith("student.") for key in distiller.state_dict() if "connector" in key)


def test_methods_are_registered():
    assert set(FEATURE_METHODS) <= set(method_names())
    assert (
        get_method("at")
        .distiller(
            create_model("resnet8", 10, 1),
            create_model("resnet8", 10, 1),
            get_method("at").options(),
            DistillContext(10, tuple(range(10)), input_shape=DIGITS_SHAPE),
        )
        .extra_parameter_count()
        == 0
    )


# ------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_each_method_lowers_its_loss_on_digits(method, teacher, digits):
    # FitNet as RepDistiller runs it: no hint stage, the hint loss kept beside CE
    options = {"hint_epochs": 0, "task_hint_weight": 100.0} if method == "fitnet" else {}
    distiller = make_distiller(method, teacher, **options)
    batches = fixed_batches(*digits)
    losses = train(distiller, batches)
    assert all(math.isfinite(v) for v in losses)
    assert falls(losses), losses


def test_fitnet_is_a_plan_of_a_hint_stage_then_a_task_stage(teacher, digits):
    entry = get_method("fitnet")
    options = entry.options(hint_epochs=1, kd_alpha=0.5)
    hint, task = entry.plan(options, TrainConfig(epochs=4))
    assert (hint.name, hint.epochs, hint.select) == ("hint", 1, "last")
    assert (task.name, task.epochs, task.select) == ("task", 3, None)  # the total stays train.epochs

    torch.manual_seed(1)
    student = create_model("resnet8", 10, 1, width=8)
    context = DistillContext(10, tuple(range(10)), input_shape=DIGITS_SHAPE)
    objective = hint.objective(student, teacher, options, context)
    # the hint stage's optimizer holds the student up to the guided layer and the regressor, nothing else
    trained = {id(p) for p in objective.trainable_parameters()}
    assert id(student.layer2[0].conv1.weight) in trained
    assert all(id(p) in trained for p in objective.regressor.parameters())
    assert id(student.layer3[0].conv1.weight) not in trained and id(student.classifier.weight) not in trained
    images, labels = digits[0][:64], digits[1][:64]
    assert set(objective.forward_train(images, labels)[1]) == {"hint"}
    classifier_before = student.classifier.weight.detach().clone()
    assert falls(train(objective, fixed_batches(*digits), steps=12))
    assert torch.equal(student.classifier.weight, classifier_before)

    _, terms = task.objective(student, teacher, options, context).forward_train(images, labels)
    assert set(terms) == {"ce", "kd"} and terms["ce"].item() > 0 and terms["kd"].item() > 0
    with pytest.raises(EdgekdError, match="hint_epochs"):
        entry.plan(entry.options(hint_epochs=1), TrainConfig(epochs=1))
    default = entry.options()
    assert hint_stage_epochs(default, 240) == 30 and hint_stage_epochs(default, 1) == 0
    assert [stage.name for stage in entry.plan(default, TrainConfig(epochs=1))] == ["train"]
    assert [stage.name for stage in entry.plan(entry.options(variant="repdistiller"), TrainConfig())] == [
        "train"
    ]


def test_training_is_deterministic(teacher, digits):
    batches = fixed_batches(*digits, count=2, size=32)
    runs = [train(make_distiller("skd", teacher), batches, steps=3) for _ in range(2)]
    assert runs[0] == runs[1]


def test_skd_distills_into_a_class_subset(teacher, digits):
    subset = (1, 3, 5, 7, 9)
    x, y = digits
    keep = torch.isin(y, torch.tensor(subset))
    remap = torch.full((10,), -1, dtype=torch.long)
    remap[list(subset)] = torch.arange(len(subset))
    distiller = make_distiller("skd", teacher, num_classes=5, class_ids=subset)
    assert distiller.student.classifier.out_features == 5
    losses = train(distiller, fixed_batches(x[keep], remap[y[keep]]))
    assert falls(losses), losses
