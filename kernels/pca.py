"""Batched PCA over a leading problem axis.

Centred PCA through the covariance matrix and a batched symmetric eigensolver (the
`covariance_eigh` route of scikit-learn). Components are sign-fixed so that the entry
of largest absolute value in each component is positive; with that convention two
solvers give the same components up to rounding, which is what parity compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.checks import check_finite
from kernels.eigh import Eigh


@dataclass
class PCAResult:
    """Fitted PCA for P problems.

    mean:                     (P, C)
    components:               (P, d, C)  rows are unit principal axes, largest variance first
    explained_variance:       (P, d)     eigenvalues of the covariance (denominator n - 1)
    explained_variance_ratio: (P, d)     explained_variance / total variance (0 where total is 0)
    n_samples:                (P,)       token count (or weight sum) each problem used
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor
    explained_variance_ratio: torch.Tensor
    n_samples: torch.Tensor


def weighted_moments(
    x: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (P, C), covariance (P, C, C) and weight sum (P,) of x (P, N, C).

    weights: (P, N) non-negative frequency weights or a boolean token mask; None = all 1.
    The covariance uses the unbiased denominator (sum of weights - 1), as scikit-learn.
    """
    p, n, c = x.shape
    if weights is None:
        # two passes: the mean, then the products of the centred tokens. (X^T X - n m m^T, as
        # scikit-learn's covariance_eigh, cancels: its error is ~ eps * |m|^2 / var, which gave
        # eigenvalues [1.06, .38, .19, 0] for [.99, .24, .039, .0097] at mean 1e3 in float32.)
        total = torch.full((p,), float(n), dtype=x.dtype, device=x.device)
        mean = x.mean(dim=1)
        cov = centred_products(x, mean)
    else:
        assert weights.shape == (p, n), f"weights must be (P, N) = {(p, n)}, got {tuple(weights.shape)}"
        w = weights.to(x.dtype)
        total = w.sum(dim=1)
        mean = (w[:, :, None] * x).sum(dim=1) / total.clamp(min=1e-30)[:, None]
        centred = x - mean[:, None, :]
        cov = (centred * w[:, :, None]).transpose(1, 2) @ centred
    cov = cov / (total - 1).clamp(min=1.0)[:, None, None]
    return mean, cov, total


CENTRED_CHUNK_ELEMENTS = 2**24  # centred copies are made this many elements at a time (64 MiB in float32)


def centred_products(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """sum_j (x_j - mean)(x_j - mean)^T for x (P, N, C), mean (P, C) -> (P, C, C).

    The centred tokens are made a block of tokens at a time, so the extra memory stays within
    CENTRED_CHUNK_ELEMENTS however many tokens a problem has (the dataset-level sample).
    """
    p, n, c = x.shape
    rows = max(1, CENTRED_CHUNK_ELEMENTS // max(p * c, 1))
    out = None
    for lo in range(0, n, rows):
        block = x[:, lo : lo + rows] - mean[:, None, :]
        part = block.transpose(1, 2) @ block
        out = part if out is None else out.add_(part)
    return out if out is not None else torch.zeros(p, c, c, dtype=x.dtype, device=x.device)


def fix_signs(components: torch.Tensor) -> torch.Tensor:
    """Flip each component (P, d, C) so its largest-|value| entry is positive."""
    idx = components.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(torch.gather(components, -1, idx))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)  # (no boolean-mask write: no host read)
    return components * signs


def pca_fit(
    x: torch.Tensor,
    n_components: int,
    weights: torch.Tensor | None = None,
    eigh: Eigh | None = None,
) -> PCAResult:
    """Fit PCA to every problem of x (P, N, C) at once; keep the top n_components.

    weights: optional (P, N) per-token weights or boolean mask (analyse a subset
    without copying). eigh: batched symmetric eigensolver returning ascending
    eigenvalues and eigenvectors (default torch.linalg.eigh; backends pass their own).
    Computation runs in x's dtype; feed float64 for a reference-grade fit.
    """
    assert x.ndim == 3, f"x must be (P, N, C), got {tuple(x.shape)}"
    p, n, c = x.shape
    if not 1 <= n_components <= c:
        raise ValueError(f"n_components must be in [1, {c}], got {n_components}")
    mean, cov, total = weighted_moments(x, weights)
    return pca_from_moments(mean, cov, total, n_components, eigh)


def pca_from_moments(
    mean: torch.Tensor, cov: torch.Tensor, total: torch.Tensor, n_components: int, eigh: Eigh | None = None
) -> PCAResult:
    """PCA of P problems given their mean (P, C), covariance (P, C, C) and weight sum (P,)
    (kernels.datr.datr_moments gives them for DATR token sets without building the tokens)."""
    if not 1 <= n_components <= cov.shape[-1]:
        raise ValueError(f"n_components must be in [1, {cov.shape[-1]}], got {n_components}")
    check_finite(cov, "PCA input")
    cov = 0.5 * (cov + cov.transpose(1, 2))  # exact symmetry for the solver
    evals, evecs = (eigh or torch.linalg.eigh)(cov)  # ascending
    evals = evals.flip(-1)[:, :n_components].clamp(min=0)
    comps = evecs.flip(-1)[:, :, :n_components].transpose(1, 2)  # (P, d, C)
    comps = fix_signs(comps)
    total_var = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)  # trace = sum of all eigenvalues
    ratio = torch.where(
        total_var[:, None] > 0, evals / total_var.clamp(min=1e-30)[:, None], torch.zeros_like(evals)
    )
    return PCAResult(
        mean=mean, components=comps, explained_variance=evals, explained_variance_ratio=ratio, n_samples=total
    )


def pca_transform(x: torch.Tensor, fit: PCAResult) -> torch.Tensor:
    """Project x (P, N, C) onto the fitted components -> (P, N, d) (no centred copy of x)."""
    comps_t = fit.components.transpose(1, 2)  # (P, C, d)
    return torch.baddbmm(-(fit.mean[:, None, :] @ comps_t), x, comps_t)


def subspace_agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest singular value of A B^T for orthonormal row bases a, b (P, d, C) -> (P,).

    1 means the two d-dimensional subspaces coincide; 0 means some direction of one is
    orthogonal to the other.
    """
    overlap = a @ b.transpose(1, 2)
    return torch.linalg.svdvals(overlap)[:, -1]
