"""Sparse representations of feature maps, as SRM (paper 004) learns and matches them.

A dictionary of M atoms D ∈ R^{C×M} and a scalar bias b describe each pixel x ∈ R^C of a (B, C, H, W) map
by its similarities to the atoms, k = σ(xᵀD + b) ∈ (0, 1)^M. Its *sparse code* keeps the top-k similarities
and zeroes the rest; x̂ = D·code reconstructs the pixel. Ties among similarities go to the lower atom index,
so the code (and the argmax atom) is a deterministic function of the similarities.

Codes are B·H·W·M numbers, tens of millions at a first tap of CIFAR size, so every function here works
through the pixels in chunks of at most ``chunk_elements`` codes and never holds them all; where gradients
flow, each chunk is checkpointed (recomputed during backward), so the graph does not hold them either. The
chunked results equal the unchunked ones up to float summation order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# Codes computed at once: 2^18 (1 MiB of floats per intermediate tensor of a chunk).
DEFAULT_CHUNK_ELEMENTS = 1 << 18
PIXEL_CE_FORMS = ("similarities", "sigmoid_logits")


class SparseDictionary(nn.Module):
    """D ∈ R^{C×M} and a learnable scalar bias b of the sigmoid kernel σ(xᵀD + b)."""

    def __init__(self, channels: int, atoms: int):
        super().__init__()
        # unit-variance similarities' argument for unit-variance pixels at the start
        self.atoms_matrix = nn.Parameter(torch.randn(channels, atoms) / math.sqrt(channels))
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def channels(self) -> int:
        return self.atoms_matrix.shape[0]

    @property
    def atoms(self) -> int:
        return self.atoms_matrix.shape[1]

    def kernel_argument(self, pixels: torch.Tensor) -> torch.Tensor:
        """xᵀD + b for pixels (..., C): (..., M)."""
        return pixels @ self.atoms_matrix + self.bias


def atom_count(channels: int, atoms_per_channel: float) -> int:
    """M = ⌊μ·C⌋ (at least one atom)."""
    return max(1, math.floor(atoms_per_channel * channels))


def kept_codes(atoms: int, sparsity: float) -> int:
    """k = max(1, ⌊λ·M⌋): how many similarities a sparse code keeps."""
    return max(1, math.floor(sparsity * atoms))


def as_pixels(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H·W, C): one row per pixel."""
    return features.flatten(2).transpose(1, 2)


def sparse_code(similarities: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` similarities of each pixel, others zeroed (ties: lower atom index first), and the index
    of each pixel's largest one (the pixel label)."""
    order = torch.sort(similarities, dim=-1, descending=True, stable=True).indices[..., :k]
    keep = torch.zeros_like(similarities, dtype=torch.bool).scatter_(-1, order, True)
    return similarities * keep, order[..., 0]


def pixel_chunk(batch: int, atoms: int, pixels: int, chunk_elements: int) -> int:
    """Pixels per image in one chunk, so a chunk holds at most ``chunk_elements`` codes."""
    return max(1, min(pixels, chunk_elements // max(1, batch * atoms)))


def chunked_sums(
    compute: Callable[[int, int], tuple[torch.Tensor, ...]], count: int, step: int, *, checkpointed: bool
) -> tuple[torch.Tensor, ...]:
    """Σ over the chunks [start, stop) of ``count`` pixels of ``compute(start, stop)`` (a tuple of sums).
    With ``checkpointed`` each chunk's intermediate tensors are freed after its forward and recomputed
    during backward, so the graph never holds more than one chunk's codes."""
    totals: tuple[torch.Tensor, ...] | None = None
    for start in range(0, count, step):
        stop = min(count, start + step)
        if checkpointed and torch.is_grad_enabled():
            sums = checkpoint(compute, start, stop, use_reentrant=False)
        else:
            sums = compute(start, stop)
        totals = sums if totals is None else tuple(a + b for a, b in zip(totals, sums, strict=True))
    assert totals is not None, "a feature map has at least one pixel"
    return totals


# ------------------------------------------------------------------------------------------ step 1
def reconstruction_error(
    features: torch.Tensor, dictionary: SparseDictionary, k: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> torch.Tensor:
    """Σ over pixels and channels of (x̂ − x)², x̂ = D·code(x); gradients reach D and b (the kept codes'
    values, not which atoms were kept). Divide by the element count for the MSE."""

    pixels = as_pixels(features)
    batch, count = pixels.shape[:2]

    def squared_error(start: int, stop: int) -> tuple[torch.Tensor]:
        part = pixels[:, start:stop]
        codes, _ = sparse_code(torch.sigmoid(dictionary.kernel_argument(part)), k)
        return ((codes @ dictionary.atoms_matrix.T - part).square().sum(),)

    step = pixel_chunk(batch, dictionary.atoms, count, chunk_elements)
    return chunked_sums(squared_error, count, step, checkpointed=True)[0]


def reconstruction_mse(
    features: torch.Tensor, dictionary: SparseDictionary, k: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> torch.Tensor:
    return reconstruction_error(features, dictionary, k, chunk_elements) / features.numel()


# ------------------------------------------------------------------------------------------ step 2
@dataclass(frozen=True)
class SparseLabels:
    """What the teacher's sparse codes teach at one tap: per pixel the index of its largest code (B, H·W),
    per image the spatial mean of the codes (B, M)."""

    pixel: torch.Tensor
    image: torch.Tensor


@torch.no_grad()
def sparse_labels(
    features: torch.Tensor, dictionary: SparseDictionary, k: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> SparseLabels:
    pixels = as_pixels(features)
    batch, count = pixels.shape[:2]
    step = pixel_chunk(batch, dictionary.atoms, count, chunk_elements)
    pixel_labels, code_sum = (
        [],
        torch.zeros(batch, dictionary.atoms, device=pixels.device, dtype=pixels.dtype),
    )
    for start in range(0, count, step):
        codes, largest = sparse_code(
            torch.sigmoid(dictionary.kernel_argument(pixels[:, start : start + step])), k
        )
        pixel_labels.append(largest)
        code_sum += codes.sum(1)
    return SparseLabels(torch.cat(pixel_labels, dim=1), code_sum / count)


def pixel_log_likelihood(kernel_argument: torch.Tensor, form: str) -> torch.Tensor:
    """log p(atom | pixel) over the M atoms, from the student's xᵀD + b.

    ``similarities`` (the paper's form, eq. 4: cross-entropy against the similarities): the similarities
    σ(xᵀD + b), normalised to sum to one over the atoms, are the pixel's distribution over atoms.
    ``sigmoid_logits`` (the authors' code): the similarities are fed to a softmax cross-entropy as if they
    were logits, softmax(σ(xᵀD + b)); since they lie in (0, 1), that distribution is nearly flat.
    """
    if form == "similarities":
        log_similarity = F.logsigmoid(kernel_argument)
        return log_similarity - torch.logsumexp(log_similarity, dim=-1, keepdim=True)
    if form == "sigmoid_logits":
        return F.log_softmax(torch.sigmoid(kernel_argument), dim=-1)
    raise ValueError(f"pixel_ce: '{form}' is not one of {', '.join(PIXEL_CE_FORMS)}")


def label_losses(
    features: torch.Tensor,
    dictionary: SparseDictionary,
    labels: SparseLabels,
    form: str = "similarities",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's pixel-level cross-entropy (mean over pixels) and image-level binary cross-entropy
    (mean over images and atoms) against the teacher's sparse labels, at one tap."""
    pixels = as_pixels(features)
    batch, count = pixels.shape[:2]

    def chunk_sums(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        argument = dictionary.kernel_argument(pixels[:, start:stop])
        log_likelihood = pixel_log_likelihood(argument, form)
        targets = labels.pixel[:, start:stop].unsqueeze(-1)
        return -log_likelihood.gather(-1, targets).sum(), torch.sigmoid(argument).sum(1)

    step = pixel_chunk(batch, dictionary.atoms, count, chunk_elements)
    cross_entropy, similarity_sum = chunked_sums(chunk_sums, count, step, checkpointed=True)
    image_similarity = (similarity_sum / count).clamp(1e-7, 1 - 1e-7)
    image_bce = F.binary_cross_entropy(image_similarity, labels.image)
    return cross_entropy / (batch * count), image_bce


@torch.no_grad()
def pixel_agreement(
    features: torch.Tensor, dictionary: SparseDictionary, labels: SparseLabels
) -> torch.Tensor:
    """How many pixels' most similar student atom is the teacher's pixel label (a count)."""
    pixels = as_pixels(features)
    predicted = dictionary.kernel_argument(pixels).argmax(-1)  # first maximum on ties, as the labels
    return (predicted == labels.pixel).sum()
