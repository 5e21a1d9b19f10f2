"""Checkpoints: written atomically, loaded with weights_only=True (a checkpoint is data, never code)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.fileio import write_atomic
from edgekd.models._common import in_wrapper_layout

_SHOWN_KEYS = 5


def save_checkpoint(obj: Any, path: Path) -> Path:
    """Serialized in memory, then written by Python: a full disk or a read-only folder is the OSError it is
    (ENOSPC, EROFS), which the CLI reports in one line, rather than torch's writer's "unexpected pos"."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def load_checkpoint(path: Path, what: str = "checkpoint") -> Any:
    path = Path(path)
    if not path.is_file():
        raise EdgekdError(f"{what}: '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code in it, a truncated file, not a torch file at all
        raise EdgekdError(f"{what}: '{path}' cannot be loaded: {why_unloadable(path, exc)}") from None


def why_unloadable(path: Path, exc: Exception) -> str:
    """Our own words for a refused checkpoint. PyTorch's message is not shown: it ends with the advice to
    load with weights_only=False, which would run whatever code the file carries."""
    size = path.stat().st_size
    head = path.read_bytes()[:4] if size else b""
    if size == 0:
        return "the file is empty"
    if not head.startswith(b"PK") and head[:1] != b"\x80":
        return "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"
    if "weights only load failed" in str(exc).lower() or "unsupported global" in str(exc).lower():
        return (
            "it holds Python objects besides tensors, which could run code when unpickled; refused (save "
            "the model's state_dict: a mapping of names to tensors)"
        )
    return "a damaged or truncated PyTorch checkpoint"


def extract_state_dict(obj: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    """Accept a bare state_dict or the common wrappers {'state_dict': ...} / {'model': ...}."""
    for key in ("state_dict", "model", "model_state_dict", "student"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EdgekdError(f"{what}: '{path}' holds no state_dict (a mapping of parameter names to tensors)")
    # Checkpoints saved from DataParallel/DDP or torch.compile prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, path: Path, what: str, arch: str) -> None:
    """Load a state_dict into `model`; a different architecture is an error naming the first mismatches."""
    model.load_state_dict(fitting_state(model, path, what, arch))


def fitting_state(model: nn.Module, path: Path, what: str, arch: str) -> dict[str, torch.Tensor]:
    """The state_dict in `path`, checked to fit `model` (which may live on the meta device) key by key:
    the same keys and shapes, values of the same kind (load_state_dict would cast integers to floats and
    drop imaginary parts without a word) and finite floating-point values (a NaN weight trains nothing)."""
    state = in_wrapper_layout(model, extract_state_dict(load_checkpoint(path, what), path, what))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        hint = stem_hint(model, state, what.rpartition(".")[0])
        raise EdgekdError(
            f"{what}: '{path}' does not fit the architecture '{arch}' ("
            + _describe(missing, unexpected, mismatched, state, expected)
            + ")"
            + (f"; {hint}" if hint else "")
        )
    unusable = _unusable_values(state, expected)
    if unusable:
        raise EdgekdError(
            f"{what}: '{path}' holds values the architecture '{arch}' cannot take ({len(unusable)} tensors, "
            f"first: {'; '.join(unusable[:_SHOWN_KEYS])}); allowed: finite values of each tensor's kind"
        )
    return state


def first_convolution_key(model: nn.Module) -> str | None:
    """The state_dict key of the model's first convolution's weight (its stem: every zoo, torchvision and
    timm classifier registers it first), or None when it has none."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{path}.weight"
    return None


def checkpoint_input_channels(model: nn.Module, path: Path, what: str) -> int | None:
    """How many image channels the checkpoint in `path` was trained on, read from its first convolution's
    weight (out, in, kh, kw) at the key it has in `model` (built on the meta device, with any channels);
    None when it cannot tell (no convolution, a key the checkpoint lacks: the fit check then says why)."""
    key = first_convolution_key(model)
    if key is None:
        return None
    state = in_wrapper_layout(model, extract_state_dict(load_checkpoint(path, what), path, what))
    weight = state.get(key)
    if weight is None or weight.dim() != 4 or weight.shape[1] < 1:
        return None
    groups = model.get_submodule(key.removesuffix(".weight")).groups
    return int(weight.shape[1]) * groups


def stem_hint(model: nn.Module, state: dict[str, torch.Tensor], section: str = "") -> str | None:
    """What to set when the checkpoint's first convolution is shaped otherwise than the model's: its kernel
    (a torchvision teacher adapted to small images) or its input channels."""
    key = first_convolution_key(model)
    ours = model.state_dict().get(key) if key is not None else None
    theirs = state.get(key) if key is not None else None
    if ours is None or theirs is None or theirs.dim() != 4 or ours.shape == theirs.shape:
        return None
    if ours.shape[1] != theirs.shape[1]:
        return (
            f"its first convolution takes {theirs.shape[1]}-channel images where the data has {ours.shape[1]}: "
            f"set `data.channels: {theirs.shape[1]}` (or leave data.channels unset)"
        )
    if theirs.shape[-2:] != ours.shape[-2:] and hasattr(model, "stem"):
        kernel = "x".join(str(side) for side in theirs.shape[-2:])
        stems = {"imagenet": "small", "small": "imagenet"}
        return (
            f"its first convolution is {kernel}: set `{section + '.' if section else ''}model_args: "
            f"{{stem: {stems[model.stem]}}}` if it was "
            "trained so (stem small: a 3x3 stride-1 first convolution and no max-pool)"
        )
    return None


def _value_kind(tensor: torch.Tensor) -> str:
    if tensor.is_complex():
        return "complex"
    if tensor.is_floating_point():
        return "floating-point"
    return "boolean" if tensor.dtype == torch.bool else "integer"


def _unusable_values(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """'conv1.weight is int64 where the architecture has float32', 'fc.bias holds NaN or infinite values'."""
    problems = []
    for key, wanted in expected.items():
        given = state[key]
        if _value_kind(given) != _value_kind(wanted):
            problems.append(f"{key} is {_dtype(given)} where the architecture has {_dtype(wanted)}")
        elif given.is_floating_point() and not bool(torch.isfinite(given).all()):
            problems.append(f"{key} holds NaN or infinite values")
    return problems


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _describe(missing, unexpected, mismatched, state, expected) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys, first: {', '.join(missing[:_SHOWN_KEYS])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, first: {', '.join(unexpected[:_SHOWN_KEYS])}")
    if mismatched:
        shown = ", ".join(
            f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:_SHOWN_KEYS]
        )
        parts.append(f"{len(mismatched)} shape mismatches, first: {shown}")
    return "; ".join(parts)
