"""Faiss, one problem at a time: faiss.PCAMatrix for PCA, a faiss index search as the assignment step of KMeans.

Faiss is built for one big problem (dataset-level clustering of millions of tokens);
for the per-image workload this adapter loops over problems, like the sklearn one.

What runs where (the device is taken from the inputs):
- PCA: faiss.PCAMatrix on the CPU for every device (faiss has no GPU PCA), in float32,
  without its subsampling (max_points_per_d is raised to cover every token).
- KMeans: kernels.kmeans's Lloyd, written once for every backend (centring, the greedy
  k-means++ starts with the same draws as the torch backend, the weighted centroid update with
  scikit-learn's empty-cluster relocation, scikit-learn's stopping rule, the restarts and the
  choice of the best), with faiss as its assignment step: every token searched in a faiss
  IndexFlatL2 holding one restart's centres (a GpuIndexFlatL2 when the inputs are on CUDA).
- What differs from scikit-learn, and parity reports instead of hiding: faiss computes in
  float32 whatever the input dtype (the whole call runs on float32 CPU tensors).
"""

from __future__ import annotations

import numpy as np
import torch

from kernels.backends.common import pca_problem
from kernels.checks import check_finite
from kernels.kmeans import KMeansResult, kmeans
from kernels.lloyd import LiveProblems
from kernels.pca import PCAResult, fix_signs


class FaissBackend:
    name = "faiss"

    def __init__(self, faiss_module):
        """faiss_module: the imported faiss package (resolve_backend imports and checks it)."""
        self.faiss = faiss_module
        self.detail = (
            f"faiss {getattr(faiss_module, '__version__', '?')}: PCA by faiss.PCAMatrix on the CPU; KMeans by "
            "kernels.kmeans's Lloyd with a faiss IndexFlatL2 search as the assignment step (GpuIndexFlatL2 for CUDA "
            "inputs), float32, one problem and restart at a time"
        )
        self._gpu_resources: dict[int, object] = {}

    # -- PCA -------------------------------------------------------------------------------
    def pca_fit(self, x: torch.Tensor, n_components: int, weights: torch.Tensor | None = None) -> PCAResult:
        p, n, c, mask = pca_problem(x, n_components, weights)
        faiss = self.faiss
        arr = x.detach().to("cpu", torch.float32).numpy()
        sel = None if mask is None else mask.cpu().numpy()
        means, comps, var, ratio, count = [], [], [], [], []
        for i in range(p):
            xi = np.ascontiguousarray(arr[i] if sel is None else arr[i][sel[i]])
            m = xi.shape[0]
            if m < 2 or not np.isfinite(xi).all():
                check_finite(torch.as_tensor(xi)[None], "PCA input")
                means.append(xi.mean(0) if m else np.zeros(c, np.float32))
                comps.append(np.eye(c, dtype=np.float32)[:n_components])
                var.append(np.zeros(n_components, np.float32))
                ratio.append(np.zeros(n_components, np.float32))
                count.append(m)
                continue
            pca = faiss.PCAMatrix(c, c)  # all c eigenpairs: the ratio's denominator is their sum
            pca.max_points_per_d = max(int(pca.max_points_per_d), -(-m // c) + 1)  # no subsampling
            pca.train(xi)
            evals = faiss.vector_to_array(pca.eigenvalues).astype(np.float64)  # descending, faiss's scale
            total = evals.sum()
            share = evals[:n_components] / total if total > 0 else np.zeros(n_components)
            # faiss's eigenvalue scale is its own; the unbiased total variance sets ours
            total_var = float(xi.astype(np.float64).var(axis=0, ddof=1).sum())
            means.append(faiss.vector_to_array(pca.mean))
            comps.append(faiss.vector_to_array(pca.PCAMat).reshape(c, c)[:n_components])
            var.append(share * total_var)
            ratio.append(share)
            count.append(m)

        def t(a):
            return torch.as_tensor(np.stack(a)).to(x.device, x.dtype)

        return PCAResult(
            mean=t(means), components=fix_signs(t(comps)), explained_variance=t(var),
            explained_variance_ratio=t(ratio), n_samples=torch.tensor(count, dtype=x.dtype, device=x.device),
        )

    # -- KMeans ----------------------------------------------------------------------------
    def _index(self, d: int, device: torch.device):
        faiss = self.faiss
        if device.type != "cuda":
            return faiss.IndexFlatL2(d)
        gpu = device.index if device.index is not None else torch.cuda.current_device()
        if gpu not in self._gpu_resources:
            self._gpu_resources[gpu] = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = gpu
        return faiss.GpuIndexFlatL2(self._gpu_resources[gpu], d, cfg)

    def kmeans(self, x, k, *, n_init, max_iter, tol, seed, init=None, weights=None, keep_restarts=0) -> KMeansResult:
        """kernels.kmeans's Lloyd (k-means++ starts, update, stopping rule, restarts) on float32 CPU
        tensors, with faiss's index search as the assignment step; the result on x's device and dtype."""
        assign = FaissAssignment(self._index(x.shape[-1], x.device))
        result = kmeans(x.detach().to("cpu", torch.float32), k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed,
                        init=None if init is None else init.detach().cpu(),
                        weights=None if weights is None else weights.detach().cpu(), keep_restarts=keep_restarts,
                        assign=assign)
        return result.to(x.device, x.dtype)


class FaissAssignment:
    """The assignment step of kernels.kmeans.lloyd through a faiss flat L2 index: for each live
    problem and packed restart, the index holds that restart's k centres and every token is
    searched (nearest centre and its squared distance, float32)."""

    def __init__(self, index):
        self.index = index

    def __call__(self, live: LiveProblems, centres: torch.Tensor, ws=None) -> tuple[torch.Tensor, torch.Tensor]:
        p, r, k, d = centres.shape
        n = live.x.shape[1]
        labels = torch.empty(p, r, n, dtype=torch.long)
        d2 = torch.empty(p, r, n, dtype=torch.float32)
        for i in range(p):
            xi = np.ascontiguousarray(live.x[i].numpy(), dtype=np.float32)
            for j in range(r):
                self.index.reset()
                self.index.add(np.ascontiguousarray(centres[i, j].numpy(), dtype=np.float32))
                dist, nearest = self.index.search(xi, 1)
                labels[i, j] = torch.from_numpy(nearest[:, 0].astype(np.int64))
                d2[i, j] = torch.from_numpy(dist[:, 0])
        return labels, d2.clamp_(min=0)
