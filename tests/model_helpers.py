"""Shared by the runner tests: models whose BatchNorm statistics are not the identity."""

from __future__ import annotations

from pathlib import Path

import torch


def with_batchnorm_statistics(net: torch.nn.Module) -> torch.nn.Module:
    """`net` in eval mode with random running means and variances, so a dropped or mis-fused BatchNorm shows
    in a parity check."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as 1×8×8 float images (standardized) and their labels."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    return (x - x.mean()) / x.std(), torch.tensor(labels)


def briefly_trained(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    """`model` after 30 SGD steps on batches of 64 of (x, y): real features, not a random network's."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for step in range(30):
        batch = slice((step % 20) * 64, (step % 20 + 1) * 64)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def build_tiny_kd_run(root: Path, export: dict, benchmark: dict) -> tuple[Path, str, Path]:
    """A real `edgekd build --quiet` of the tiny kd recipe into `root` with these export and benchmark
    sections: (its run folder, what the CLI printed, the recipe's path)."""
    import yaml
    from click.testing import CliRunner
    from conftest import TINY_RECIPE

    from edgekd.cli import main

    recipe = {**TINY_RECIPE, "output_dir": str(root / "runs"), "export": export, "benchmark": benchmark}
    recipe["distill"] = {"method": "kd"}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["build", str(path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny", result.output, path
