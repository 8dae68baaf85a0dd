"""The batched torch backend: all problems in one call, on the inputs' device."""

from __future__ import annotations

import torch

from kernels.eigh import eigh_function
from kernels.kmeans import KMeansResult, kmeans
from kernels.pca import PCAResult, pca_fit, pca_from_moments


class TorchBackend:
    """Batched PCA (covariance + a batched eigensolver) and batched Lloyd KMeans.

    eigh: "auto" (per call from the tensor's device: torch on the CPU, cupy or host on
    CUDA -- see kernels/eigh.py), or one of "torch", "cupy", "host". resolve_backend
    passes a concrete method so that what ran is recorded.
    """

    name = "torch"

    def __init__(self, *, eigh: str = "auto"):
        self.eigh = eigh
        self.detail = f"batched torch: PCA with the {eigh} eigensolver, Lloyd KMeans for all problems in one call"
        self._eigh = eigh_function(eigh)

    def pca_fit(self, x: torch.Tensor, n_components: int, weights: torch.Tensor | None = None) -> PCAResult:
        return pca_fit(x, n_components, weights=weights, eigh=self._eigh)

    def pca_from_moments(self, mean, cov, total, n_components: int) -> PCAResult:
        """PCA from moments (DATR token sets that are never built); see kernels.datr.datr_moments."""
        return pca_from_moments(mean, cov, total, n_components, eigh=self._eigh)

    def kmeans(self, x, k, *, n_init, max_iter, tol, seed, init=None, weights=None, keep_restarts=0) -> KMeansResult:
        return kmeans(x, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, init=init, weights=weights,
                      keep_restarts=keep_restarts)
