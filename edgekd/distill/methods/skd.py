"""SKD, model specialization by knowledge distillation (paper 001).

The teacher knows every class; the student learns a subset with its own K-way head, so no logits are
compared, only feature maps (paper eq. 5-6):

    L = CE + (lambda/2) * sum_i beta^-(L-1-i) * ( FM_i + TM_i )

* FM_i is the Overhaul distance at tap pair i (see ofd.py): the connected pre-ReLU student map against the
  teacher's map clipped at its BN margin, partial L2 summed per image, times ``fm_scale`` (the reference's
  extra 1/1000, methods.md).
* TM_i is the Lipschitz term (Shang et al. 2021): |sigma(TM_T) - sigma(TM_S)| averaged over the batch, where
  sigma is the largest singular value of the transmitting matrix between two consecutive taps of one
  network: tap i-1 average-pooled to tap i's H x W, TM = F_{i-1} F_i^T / HW, shape (B, C_{i-1}, C_i)
  (methods.md). The student's maps are taken after their connectors, so both sides have the teacher's
  channels and sizes.
  TM_i gets the same 1/1000 (``tm_scale``), keeping the paper's 1:1 balance of FM and TM: unscaled, its
  values (hundreds for a trained CIFAR ResNet's pre-ReLU maps) swamp CE and the student stops learning the
  task (seen on digits: CE stuck at 2.3 with scale 1, falling as with OFD at 1e-3 and 1e-2).

Choices where methods.md leaves room:
* TM_i belongs to the module between taps i-1 and i (the paper's Fig. 2: "the input and output feature maps
  of each module"), so it takes the depth weight of tap i, its output; the shallowest tap has no TM term.
* The teacher side of TM uses its raw pre-ReLU maps (the margin clip belongs to the FM distance's target).
* sigma keeps its gradient: the reference computed it entirely under no_grad, so the term did nothing
  (methods.md, pitfall). Here the top singular vectors u, v are found without gradient and sigma = u^T TM v
  is differentiated: its gradient u v^T is the exact gradient of sigma when u, v are exact. They come from
  the top eigenvector of the smaller Gram matrix, in float64 (exact; ``power_iterations: 0``, the default).
  Power iteration, as torch's spectral_norm uses, converges at (sigma_2/sigma_1)^2 per step: 20 steps left
  the gradient ~5 % off on random 16x32 matrices (sigma itself within 4e-4), so it is an option only.
* The teacher stays in eval mode (the reference left it in train mode, so its BN statistics drifted).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgekd.distill.features import resize_to
from edgekd.distill.methods.ofd import OFD, depth_weights, overhaul_distances
from edgekd.distill.registry import implements


def spectral_norm(matrices: torch.Tensor, iterations: int = 0) -> torch.Tensor:
    """Largest singular value of each matrix of a (..., m, n) batch, with its exact gradient.

    sigma = u^T A v with the top singular vectors u, v held constant: its gradient u v^T is the gradient of
    the largest singular value (where it is simple). `iterations` 0: u, v exact (top_singular_vectors);
    N > 0: N power-iteration steps from a fixed start (all ones: no random numbers consumed), approximate.
    """
    with torch.no_grad():
        detached = matrices.detach()
        if iterations == 0:
            u, v = top_singular_vectors(detached)
        else:
            u, v = power_iteration(detached, iterations)
    return (u.mT @ matrices @ v)[..., 0, 0]


def top_singular_vectors(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) of each (..., m, n) matrix, as (..., m, 1) and (..., n, 1): the top eigenvector of the smaller
    of A A^T and A^T A (float64: the Gram matrix squares the condition number), the other by one product.
    Cheaper than a batched SVD on wide maps, and exact where power iteration is slow to converge."""
    wide = matrices.double()
    if wide.shape[-2] <= wide.shape[-1]:
        u = torch.linalg.eigh(wide @ wide.mT).eigenvectors[..., -1:]
        v = F.normalize(wide.mT @ u, dim=-2)
    else:
        v = torch.linalg.eigh(wide.mT @ wide).eigenvectors[..., -1:]
        u = F.normalize(wide @ v, dim=-2)
    return u.to(matrices.dtype), v.to(matrices.dtype)


def power_iteration(matrices: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    columns = matrices.shape[-1]
    v = torch.ones(*matrices.shape[:-2], columns, 1, dtype=matrices.dtype, device=matrices.device)
    v = v / math.sqrt(columns)
    for _ in range(iterations):
        u = F.normalize(matrices @ v, dim=-2)
        v = F.normalize(matrices.mT @ u, dim=-2)
    return F.normalize(matrices @ v, dim=-2), v


def transmitting_matrix(shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
    """F_s F_d^T / HW with the shallower map pooled to the deeper one's size: (B, C_shallow, C_deep)."""
    shallow = resize_to(shallow, deep.shape[-2:])
    positions = deep.shape[-2] * deep.shape[-1]
    return shallow.flatten(2) @ deep.flatten(2).mT / positions


def lipschitz_gaps(
    teacher_features: list[torch.Tensor], student_features: list[torch.Tensor], iterations: int
) -> list[torch.Tensor]:
    """For each consecutive pair of taps (i-1, i), i >= 1: mean over images of |sigma_T - sigma_S|."""
    pairs = range(1, len(teacher_features))
    with torch.no_grad():
        teacher_tms = [transmitting_matrix(teacher_features[i - 1], teacher_features[i]) for i in pairs]
    student_tms = [transmitting_matrix(student_features[i - 1], student_features[i]) for i in pairs]
    sigmas = spectral_norms(teacher_tms + student_tms, iterations)
    count = len(teacher_tms)
    return [(sigmas[i].detach() - sigmas[count + i]).abs().mean() for i in range(count)]


def spectral_norms(matrices: list[torch.Tensor], iterations: int) -> list[torch.Tensor]:
    """spectral_norm of each (B, m, n) matrix batch, the power iterations batched.

    On a GPU the step is bound by kernel launches (20 iterations per matrix were most of SKD's overhead
    there), so every matrix goes into one batch, zero-padded to the largest shape: padding with zeros leaves
    the singular values as they are. On a CPU the padding's extra arithmetic costs more than the launches
    save (measured: 31 vs 41 ms per step for wrn_40_2's taps at batch 64), so only matrices of one shape (a
    tap pair's teacher's and student's) share an iteration."""
    if matrices[0].is_cuda:
        return list(spectral_norm(stack_padded(matrices), iterations).unbind(0))
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, matrix in enumerate(matrices):
        groups.setdefault(tuple(matrix.shape), []).append(index)
    sigmas: list[torch.Tensor | None] = [None] * len(matrices)
    for members in groups.values():
        stacked = spectral_norm(torch.stack([matrices[i] for i in members]), iterations)
        for slot, index in enumerate(members):
            sigmas[index] = stacked[slot]
    return sigmas  # type: ignore[return-value]


def stack_padded(matrices: list[torch.Tensor]) -> torch.Tensor:
    """(B, m_k, n_k) matrices zero-padded to the largest m and n and stacked: (K, B, m, n)."""
    rows = max(m.shape[-2] for m in matrices)
    columns = max(m.shape[-1] for m in matrices)
    return torch.stack([F.pad(m, (0, columns - m.shape[-1], 0, rows - m.shape[-2])) for m in matrices])


@implements("skd")
class SKD(OFD):
    """OFD's pre-ReLU taps, connectors and margins, plus the Lipschitz term, weighted by depth."""

    method = "skd"

    def distill_terms(self, images):
        options = self.options
        _, teacher_features = self.teacher_features(images)
        logits, student_features = self.student_features(images)
        margins = self.margin_bank.margins(teacher_features)
        distances, connected = overhaul_distances(
            self.connectors, margins, student_features, teacher_features
        )
        weights = depth_weights(len(distances), options.beta)
        half_lambda = options.weight / 2
        terms = {
            "fm": half_lambda * options.fm_scale * sum(w * d for w, d in zip(weights, distances, strict=True))
        }
        if len(distances) > 1 and options.tm_scale > 0:
            gaps = lipschitz_gaps(teacher_features, connected, options.power_iterations)
            # gap i-1 is the module ending at tap i, which carries tap i's weight
            terms["tm"] = (
                half_lambda * options.tm_scale * sum(w * g for w, g in zip(weights[1:], gaps, strict=True))
            )
        else:
            terms["tm"] = logits.new_zeros(())
        return logits, terms
