"""DistPro (paper 002): pathways, HCL, the biased softmax, the functional hyper-gradient, process replay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.hypergradient import call, finite_difference_hypergradient, unrolled_step
from edgekd.distill.pathways import (
    PathwayTransform,
    allowed_pairs,
    hcl_loss,
    interpolate_process,
    process_weights,
)


# ------------------------------------------------------------------------------------------- pieces
def test_biased_softmax_against_a_hand_computation():
    logits = torch.tensor([0.0, 1.0, 2.0])
    e = torch.exp(torch.tensor([0.0, 1.0, 2.0, 1.0]))  # the extra logit g = 1
    torch.testing.assert_close(process_weights(logits, 1.0), e[:3] / e.sum())
    assert process_weights(logits, 1.0).sum() < 1  # the bias takes a share: all weights can shrink
    torch.testing.assert_close(process_weights(logits, None), F.softmax(logits, 0))


def test_hcl_uses_the_levels_smaller_than_the_map_with_normalised_weights():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    pooled = [
        F.mse_loss(F.adaptive_avg_pool2d(student, s), F.adaptive_avg_pool2d(teacher, s)) for s in (4, 2, 1)
    ]
    expected = (F.mse_loss(student, teacher) + 0.5 * pooled[0] + 0.25 * pooled[1] + 0.125 * pooled[2]) / 1.875
    torch.testing.assert_close(hcl_loss(student, teacher), expected)
    small_s, small_t = student[..., :2, :2], teacher[..., :2, :2]  # 2x2: only the 1x1 level is smaller
    expected_small = (
        F.mse_loss(small_s, small_t) + 0.125 * F.mse_loss(small_s.mean((2, 3)), small_t.mean((2, 3)))
    ) / 1.125
    torch.testing.assert_close(hcl_loss(small_s, small_t), expected_small)


def test_transform_maps_a_student_tap_to_the_teachers_shape():
    transform = PathwayTransform(student_channels=8, teacher_channels=32, teacher_size=(8, 8))
    assert transform(torch.randn(2, 8, 4, 4)).shape == (2, 32, 8, 8)
    assert transform.enter[0].out_channels == 8  # mid = min(512, C_t, C_s)


def test_allowed_pairs_deeper_or_same():
    assert allowed_pairs(3, 3, "deeper_or_same") == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    assert len(allowed_pairs(2, 3, "all")) == 6


def test_the_interpolated_process_hits_the_recorded_values_at_the_recorded_points():
    steps = [0, 10, 20, 40]
    values = torch.tensor([[0.1, 0.9], [0.3, 0.7], [0.5, 0.5], [0.9, 0.1]])
    replay = interpolate_process(steps, values, total_steps=80, searched_steps=40)
    for step, row in zip(steps, values, strict=True):
        torch.testing.assert_close(replay(2 * step), row)  # twice as long: search step s is replay step 2s
    torch.testing.assert_close(replay(10), torch.tensor([0.2, 0.8]))  # halfway between steps 0 and 10
    torch.testing.assert_close(replay(60), torch.tensor([0.7, 0.3]))
    torch.testing.assert_close(replay(1000), values[-1])


# ------------------------------------------------------------------------------------------- hyper-gradient
class Tiny(nn.Module):
    """CE on a two-layer net plus α-weighted matches of its hidden units to two targets."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x, y, targets=None, alpha=None):
        h = torch.tanh(self.norm(self.hidden(x)))
        ce = F.cross_entropy(self.out(h), y)
        if alpha is None:
            return ce
        weights = process_weights(alpha, 1.0)
        terms = [(h[:, :3] - targets[0]).square().mean(), (h[:, 3:] - targets[1]).square().mean()]
        return ce + weights[0] * terms[0] + weights[1] * terms[1]


def tiny_problem(optimizer_kind: str):
    torch.manual_seed(0)
    model = Tiny().double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    xv, yv = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    targets = (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64))
    if optimizer_kind == "nesterov":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # one real step first, so the momentum buffers are not empty
    model(x, y, targets, alpha=torch.zeros(2, dtype=torch.float64)).backward()
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer, (x, y, targets), (xv, yv), torch.tensor([0.3, -0.2], dtype=torch.float64)


@pytest.mark.parametrize("optimizer_kind", ["plain", "nesterov"])
def test_finite_difference_hypergradient_agrees_with_double_backpropagation(optimizer_kind):
    model, optimizer, train_args, val_args, alpha = tiny_problem(optimizer_kind)
    trained = [name for name, _ in model.named_parameters()]
    approx = finite_difference_hypergradient(model, trained, train_args, val_args, alpha, optimizer)
    # exact: differentiate L_val(w'(α)) through the unrolled step itself (create_graph)
    live = dict(model.named_parameters())
    weights = {name: p.detach().clone().requires_grad_(True) for name, p in live.items()}
    probe = alpha.clone().requires_grad_(True)
    grads = torch.autograd.grad(
        call(model, weights, *train_args, alpha=probe), list(weights.values()), create_graph=True
    )
    stepped, _ = unrolled_step(
        {n: w.detach() for n, w in weights.items()}, dict(zip(trained, grads, strict=True)), live, optimizer
    )
    exact = torch.autograd.grad(call(model, stepped, *val_args, alpha=None), probe)[0]
    relative = (approx.alpha_grad - exact).norm() / exact.norm()
    assert exact.norm() > 0 and relative < 1e-3, (approx.alpha_grad, exact)


def test_a_search_step_leaves_the_live_parameters_and_statistics_bit_identical():
    model, optimizer, train_args, val_args, alpha = tiny_problem("nesterov")
    before = {name: t.clone() for name, t in model.state_dict().items()}
    buffers = {id(p): optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    model.train()
    finite_difference_hypergradient(
        model, [n for n, _ in model.named_parameters()], train_args, val_args, alpha, optimizer
    )
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BatchNorm running stats included
    assert all(torch.equal(buffers[id(p)], optimizer.state[p]["momentum_buffer"]) for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------- the method
DIGITS_SHAPE = (1, 8, 8)  # `digits` and `teacher` (a briefly trained resnet20) come from conftest.py


def distpro_stage(objective, teacher, student=None, **options):
    from edgekd.distill import DistillContext, get_method
    from edgekd.models import create_model

    torch.manual_seed(1)
    student = student or create_model("resnet8", 10, 1, width=8)
    context = DistillContext(10, tuple(range(10)), input_shape=DIGITS_SHAPE)
    return objective(student, teacher, get_method("distpro").options(**options), context)


class HeldOut:
    """The part of a DataBundle the search reads: its search-val images, in a fixed order."""

    def __init__(self, images, labels):
        self.val = list(zip(images.split(16), labels.split(16), strict=True))
        self.train = images

    def eval_loader(self, split):
        assert split == "val"
        return self.val


def test_a_search_step_moves_only_alpha(teacher, digits):
    from edgekd.distill.methods.distpro import DistProSearch

    search = distpro_stage(DistProSearch, teacher)
    assert len(search.pathways) == 6 and search.pathway_names()[1] == "layer1<-layer2#0"
    search.prepare_stage(HeldOut(digits[0][100:132], digits[1][100:132]), torch.device("cpu"))
    search.on_epoch_start(0, 1)
    optimizer = torch.optim.SGD(search.trainable_parameters(), lr=0.05, momentum=0.9, nesterov=True)
    search.train()
    images, labels = digits[0][:32], digits[1][:32]
    search.forward_train(images, labels)[1]["ce"].backward()  # one real step: momentum buffers exist
    optimizer.step()
    optimizer.zero_grad()
    before = {k: v.clone() for k, v in search.state_dict().items() if k != "_extra_state"}
    alpha_before = search.alpha().clone()
    search.before_step(images, labels, optimizer)
    after = search.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["alpha_logits"], changed  # the student, transforms and BN statistics are untouched
    assert not torch.equal(alpha_before, search.alpha())
    assert search.recorded_steps == [0] and search.steps_done == 1


def test_the_search_state_survives_a_checkpoint(teacher, digits):
    from edgekd.distill.methods.distpro import DistProSearch

    search = distpro_stage(DistProSearch, teacher)
    search.prepare_stage(HeldOut(digits[0][100:132], digits[1][100:132]), torch.device("cpu"))
    optimizer = torch.optim.SGD(search.trainable_parameters(), lr=0.05)
    search.before_step(digits[0][:32], digits[1][:32], optimizer)
    search.before_step(digits[0][32:64], digits[1][32:64], optimizer)
    restored = distpro_stage(DistProSearch, teacher)
    restored.load_state_dict(search.state_dict())
    assert restored.recorded_steps == search.recorded_steps == [0, 1]
    assert torch.equal(restored.alpha(), search.alpha())
    assert restored.alpha_optimizer.state_dict()["state"][0]["step"] == 2


def test_replay_follows_the_process_and_refuses_other_pathways(teacher):
    from edgekd.distill.methods.distpro import PROCESS_FORMAT, DistProReplay
    from edgekd.errors import EdgekdError

    replay = distpro_stage(DistProReplay, teacher)
    values = torch.softmax(torch.randn(3, 6), 1)
    process = {
        "format": PROCESS_FORMAT,
        "pathways": replay.pathway_names(),
        "steps": [0, 5, 10],
        "alpha": values,
        "logits": torch.tensor([[0.0] * 6, [0.2, 0.6, 0.0, 0.0, 0.0, 0.0], [0.1, 0.7, 0.0, 0.0, 0.0, 0.0]]),
        "searched_steps": 10,
    }
    replay.use_artifact("process", process)
    for step, row in ((0, values[0]), (50, values[1]), (100, values[2])):  # a run 10x the search
        replay.on_step_start(step, 100)
        torch.testing.assert_close(replay.current, row)
    dropping = distpro_stage(DistProReplay, teacher, drop_below=0.5)
    dropping.use_artifact("process", process)
    assert dropping.active == [False, True, False, False, False, False]
    assert len(dropping.trainable_parameters()) < len(replay.trainable_parameters())
    other = distpro_stage(DistProReplay, teacher, pairs="all")
    with pytest.raises(EdgekdError) as error:
        other.use_artifact("process", process)
    message = str(error.value)
    assert "\n" not in message and "searched over 6 pathways" in message and "this recipe has 9" in message


def test_plans_of_the_three_weightings():
    from edgekd.distill import get_method
    from edgekd.distill.methods.distpro import distpro_plan
    from edgekd.recipe import TrainConfig

    options = get_method("distpro").options
    search, replay = distpro_plan(options(), TrainConfig(epochs=60))
    assert (search.view, search.epochs, search.select) == ("holdout", 10, "last")
    assert replay.fresh_student and replay.epochs == 60 and replay.consumes[0].name == "process"
    (equal,) = distpro_plan(options(weights="equal"), TrainConfig(epochs=60))
    assert not equal.consumes and not equal.fresh_student
    assert [s.name for s in distpro_plan(options(weights="final"), TrainConfig(epochs=60))] == [
        "search",
        "replay",
    ]
