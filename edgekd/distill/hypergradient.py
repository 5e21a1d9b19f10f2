"""The hyper-gradient of a bi-level search (DARTS-style, DistPro's Alg. 1), computed functionally.

The inner problem trains the weights w on L_train(w, α); the outer one moves α to lower L_val(w'), where w'
is w after one (unrolled) optimizer step. With v = ∇_{w'} L_val(w'), the chain rule through the unrolled step
gives ∇_α L_val(w'(α)) = −ξ·∇²_{α,w} L_train(w, α)·v, and the mixed second derivative is approximated by a
central finite difference along v:

    ∇_α ≈ −ξ·[∇_α L_train(w + εv, α) − ∇_α L_train(w − εv, α)] / 2ε,   ε = 0.01 / ‖v‖.

(L_val is the task loss alone, so it has no direct term in α.) Every evaluation runs the module through
`torch.func.functional_call` on explicit copies of its weights and buffers: the live parameters, BatchNorm
statistics and optimizer state are never written, so nothing of the unrolled step leaks into training (the
authors' release restored the weights from a state_dict that aliased the live tensors).

The module's ``forward(*args, alpha)`` returns L_train for a tensor ``alpha`` and L_val for ``alpha=None``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Hypergradient:
    alpha_grad: torch.Tensor
    epsilon: float
    val_loss: float
    unrolled: str  # how the inner step was unrolled: "sgd" (momentum, weight decay, Nesterov) or "gradient"


def call(module: nn.Module, weights: Weights, *args, alpha=None) -> torch.Tensor:
    """``module(*args, alpha=alpha)`` with ``weights`` in place of its trained parameters and fresh copies of
    its other parameters and buffers (BatchNorm may update its running statistics: the copies take them)."""
    state = {name: tensor.detach().clone() for name, tensor in module.named_buffers()}
    state.update({name: p.detach() for name, p in module.named_parameters() if name not in weights})
    state.update(weights)
    return functional_call(module, state, args, {"alpha": alpha})


def unrolled_step(
    weights: Weights, grads: Weights, live: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer
) -> tuple[Weights, str]:
    """w' = w − ξ·d, with d what the optimizer's next step would apply: for SGD the gradient plus weight decay
    through its momentum buffer (Nesterov included; dampening 0); for any other optimizer the plain gradient
    (said in the second return value)."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    stepped: Weights = {}
    kinds = set()
    for name, weight in weights.items():
        parameter = live[name]
        group = group_of[id(parameter)]
        direction = grads[name]
        if isinstance(optimizer, torch.optim.SGD):
            kinds.add("sgd")
            direction = direction + group["weight_decay"] * weight
            momentum = group["momentum"]
            if momentum:
                buffer = optimizer.state.get(parameter, {}).get("momentum_buffer")
                buffer = direction if buffer is None else momentum * buffer + direction
                direction = direction + momentum * buffer if group["nesterov"] else buffer
        else:
            kinds.add("gradient")
        stepped[name] = weight - group["lr"] * direction
    return stepped, "+".join(sorted(kinds))


def finite_difference_hypergradient(
    module: nn.Module,
    trained: list[str],
    train_args: tuple,
    val_args: tuple,
    alpha: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    epsilon_scale: float = 0.01,
) -> Hypergradient:
    """∇_α L_val(w'(α)) for the module's trained parameters ``trained`` (names), by the finite difference
    above; ξ is the optimizer's learning rate (times 1 + momentum under Nesterov, see `gradient_scale`)."""
    live = dict(module.named_parameters())
    weights = {name: live[name].detach().clone().requires_grad_(True) for name in trained}
    train_loss = call(module, weights, *train_args, alpha=alpha.detach())
    grads = dict(zip(trained, torch.autograd.grad(train_loss, list(weights.values())), strict=True))
    stepped, unrolled = unrolled_step(
        {name: weight.detach() for name, weight in weights.items()}, grads, live, optimizer
    )
    stepped = {name: weight.requires_grad_(True) for name, weight in stepped.items()}
    val_loss = call(module, stepped, *val_args, alpha=None)
    v = dict(
        zip(trained, torch.autograd.grad(val_loss, list(stepped.values()), allow_unused=True), strict=True)
    )
    v = {name: torch.zeros_like(stepped[name]) if g is None else g for name, g in v.items()}
    norm = torch.sqrt(sum(g.double().square().sum() for g in v.values()))
    epsilon = epsilon_scale / max(float(norm), 1e-12)
    alpha_grads = []
    for sign in (1.0, -1.0):
        shifted = {name: weights[name].detach() + sign * epsilon * v[name] for name in trained}
        probe = alpha.detach().clone().requires_grad_(True)
        loss = call(module, shifted, *train_args, alpha=probe)
        alpha_grads.append(torch.autograd.grad(loss, probe)[0])
    scale = gradient_scale(optimizer, [live[name] for name in trained])
    hyper = -scale * (alpha_grads[0] - alpha_grads[1]) / (2 * epsilon)
    return Hypergradient(hyper, epsilon, float(val_loss.detach()), unrolled)


def gradient_scale(optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter]) -> float:
    """∂w'/∂(gradient) of the unrolled step, ξ: the learning rate, times (1 + momentum) under Nesterov SGD
    (whose step applies the new gradient twice: directly and through the buffer). The trained parameters
    must share one optimizer setting."""
    ids = {id(p) for p in parameters}
    scales = set()
    for group in optimizer.param_groups:
        if any(id(p) in ids for p in group["params"]):
            nesterov = isinstance(optimizer, torch.optim.SGD) and group.get("nesterov", False)
            scales.add(group["lr"] * (1 + group["momentum"] if nesterov else 1))
    if len(scales) != 1:
        raise ValueError(f"the trained parameters step at scales {sorted(scales)}; the search needs one")
    return scales.pop()
