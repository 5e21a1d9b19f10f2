"""Rule `proxy`: train each finalist briefly on the student's labelled images and keep the one with the best
validation accuracy (the test split is never evaluated here).

Plain cross-entropy (no teacher) with the recipe's optimizer and a cosine schedule over `proxy.epochs`: a
cheap, method-independent estimate of how well an architecture learns this data; every finalist starts from
the recipe's seed and sees the same batches.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from edgekd.config.train import ScheduleConfig, TrainConfig
from edgekd.data import DataBundle
from edgekd.distill import DistillContext, get_method
from edgekd.models.budget import Member, describe_member
from edgekd.models.registry import create_model
from edgekd.recipe import Recipe
from edgekd.train import Trainer


def proxy_scores(
    recipe: Recipe,
    data: DataBundle,
    members: list[Member],
    device: torch.device,
    say: Callable[[str], None] | None,
) -> list[float]:
    """Best validation accuracy (%) of each member after its short training, in the order given."""
    budget = recipe.latency_budget
    config = TrainConfig(
        epochs=budget.proxy.epochs,
        optimizer=recipe.train.optimizer,
        schedule=ScheduleConfig(name="cosine"),
        grad_clip=recipe.train.grad_clip,
    )
    scores = []
    with tempfile.TemporaryDirectory(prefix="edgekd-proxy-") as folder:
        for position, member in enumerate(members):
            if say is not None:
                say(f"proxy: training {describe_member(*member)} for {config.epochs} epochs")
            scores.append(
                train_briefly(member, data, config, recipe.seed, device, Path(folder) / str(position))
            )
    return scores


def train_briefly(
    member: Member, data: DataBundle, config: TrainConfig, seed: int, device: torch.device, folder: Path
) -> float:
    name, model_args = member
    torch.manual_seed(seed)
    model = create_model(name, data.num_classes, data.input_spec.channels, **model_args)
    scratch = get_method("scratch")
    context = DistillContext(data.num_classes, tuple(range(data.num_classes)))
    distiller = scratch.distiller(model, None, scratch.options(), context)
    trainer = Trainer(distiller, data, config, seed=seed, out_dir=folder, device=device, label="proxy")
    return float(trainer.fit().best_val_acc)
