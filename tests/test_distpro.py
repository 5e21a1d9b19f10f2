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
