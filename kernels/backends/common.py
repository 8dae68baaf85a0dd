"""Small pieces the per-problem adapters (faiss, cuml) share."""

from __future__ import annotations

import torch


def pca_problem(x: torch.Tensor, n_components: int, weights: torch.Tensor | None) -> tuple[int, int, int, torch.Tensor | None]:
    """Check a per-problem PCA call: x (P, N, C) -> (P, N, C, token mask or None)."""
    assert x.ndim == 3, f"x must be (P, N, C), got {tuple(x.shape)}"
    p, n, c = x.shape
    if not 1 <= n_components <= c:
        raise ValueError(f"n_components must be in [1, {c}], got {n_components}")
    return p, n, c, token_mask(weights, (p, n))


def token_mask(weights: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor | None:
    """A PCA weights argument as a boolean token mask (P, N), or None for all tokens.

    The per-problem libraries fit PCA to a subset, not to real-valued weights, so those
    are refused rather than rounded.
    """
    if weights is None:
        return None
    assert tuple(weights.shape) == shape, f"weights must be (P, N) = {shape}, got {tuple(weights.shape)}"
    if weights.dtype == torch.bool:
        return weights
    if not bool(((weights == 0) | (weights == 1)).all()):
        raise ValueError("this backend's PCA takes a 0/1 token mask, not real-valued weights")
    return weights != 0

