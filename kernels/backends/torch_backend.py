"""The batched torch backend: all problems in one call, on the inputs' device."""

from __future__ import annotations

import torch

from kernels.kmeans import KMeansResult, kmeans
from kernels.pca import PCAResult, pca_fit


class TorchBackend:
    name = "torch"

    def pca_fit(self, x: torch.Tensor, n_components: int, weights: torch.Tensor | None = None) -> PCAResult:
        return pca_fit(x, n_components, weights=weights)

    def kmeans(self, x, k, *, n_init, max_iter, tol, seed, init=None, weights=None) -> KMeansResult:
        return kmeans(x, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, init=init, weights=weights)
