"""RAPIDS cuML, one problem at a time on the GPU: cuml.PCA, and Lloyd with cuML's distances for KMeans.

The per-problem GPU library, as a yardstick for the batched torch path and for
dataset-level problems. Tensors go to CuPy and back through DLPack (no copy).

- PCA: cuml.PCA(svd_solver="full"), an eigendecomposition of the covariance -- the
  same route as scikit-learn's covariance_eigh; components sign-fixed as everywhere.
  A token mask fits the masked subset; real-valued weights are refused.
- KMeans: kernels.kmeans's Lloyd, written once for every backend (its validation, centring,
  k-means++ starts with the torch backend's draws, update with scikit-learn's empty-cluster
  relocation, stopping rule and restarts), with cuml.metrics.pairwise_distances as the
  assignment step (one problem and restart at a time). So a seed means the same starts as on
  the other backends, and `tol` is scikit-learn's centre-shift tolerance.
"""

from __future__ import annotations

import torch

from kernels.backends.common import pca_problem
from kernels.checks import check_finite
from kernels.kmeans import KMeansResult, kmeans
from kernels.lloyd import LiveProblems
from kernels.pca import PCAResult, fix_signs


class CumlBackend:
    name = "cuml"

    def __init__(self, cuml_module, cupy_module):
        """cuml_module / cupy_module: the imported packages (resolve_backend imports and checks them)."""
        self.cuml = cuml_module
        self.cupy = cupy_module
        self.detail = (
            f"cuML {getattr(cuml_module, '__version__', '?')}: cuml.PCA(svd_solver='full'), and kernels.kmeans's Lloyd "
            "with cuML's pairwise distances as the assignment step; one problem at a time on the GPU (DLPack in and out)"
        )

    def _device(self, x: torch.Tensor):
        if x.device.type != "cuda":
            raise ValueError(f"the cuml backend takes CUDA tensors, got one on {x.device}")
        return self.cupy.cuda.Device(x.device.index if x.device.index is not None else torch.cuda.current_device())

    def _to_cupy(self, t: torch.Tensor):
        return self.cupy.from_dlpack(t.detach().contiguous())

    def pca_fit(self, x: torch.Tensor, n_components: int, weights: torch.Tensor | None = None) -> PCAResult:
        from cuml.decomposition import PCA

        p, n, c, mask = pca_problem(x, n_components, weights)
        means, comps, var, ratio, count = [], [], [], [], []
        with self._device(x):
            for i in range(p):
                xi = x[i] if mask is None else x[i][mask[i]]
                check_finite(xi.reshape(1, -1), "PCA input")
                pca = PCA(n_components=n_components, svd_solver="full", output_type="cupy", copy=True, verbose=False)
                pca.fit(self._to_cupy(xi))
                means.append(torch.from_dlpack(pca.mean_))
                comps.append(torch.from_dlpack(pca.components_))
                var.append(torch.from_dlpack(pca.explained_variance_))
                ratio.append(torch.from_dlpack(pca.explained_variance_ratio_))
                count.append(xi.shape[0])
        return PCAResult(
            mean=torch.stack(means).to(x.dtype), components=fix_signs(torch.stack(comps).to(x.dtype)),
            explained_variance=torch.stack(var).to(x.dtype), explained_variance_ratio=torch.stack(ratio).to(x.dtype),
            n_samples=torch.tensor(count, dtype=x.dtype, device=x.device),
        )

    def kmeans(self, x, k, *, n_init, max_iter, tol, seed, init=None, weights=None, keep_restarts=0) -> KMeansResult:
        """kernels.kmeans's Lloyd on x's device, with cuML's pairwise distances as the assignment step."""
        with self._device(x):
            return kmeans(x, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, init=init, weights=weights,
                          keep_restarts=keep_restarts, assign=CumlAssignment(self._to_cupy))


class CumlAssignment:
    """The assignment step of kernels.kmeans.lloyd by cuml.metrics.pairwise_distances (squared
    Euclidean), one live problem and packed restart at a time, on the GPU (DLPack in and out)."""

    def __init__(self, to_cupy):
        self.to_cupy = to_cupy

    def __call__(self, live: LiveProblems, centres: torch.Tensor, ws=None) -> tuple[torch.Tensor, torch.Tensor]:
        from cuml.metrics import pairwise_distances

        p, r, k, d = centres.shape
        n = live.x.shape[1]
        labels = torch.empty(p, r, n, dtype=torch.long, device=live.x.device)
        d2 = torch.empty(p, r, n, dtype=live.x.dtype, device=live.x.device)
        for i in range(p):
            xi = self.to_cupy(live.x[i])
            for j in range(r):
                dist = torch.from_dlpack(pairwise_distances(xi, self.to_cupy(centres[i, j]), metric="sqeuclidean"))
                d2[i, j], labels[i, j] = dist.to(d2.dtype).min(dim=-1)  # (N, k) -> nearest centre
        return labels, d2.clamp_(min=0)
