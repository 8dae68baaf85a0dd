"""Faiss, one problem at a time: faiss.PCAMatrix for PCA, faiss.Clustering steps for KMeans.

Faiss is built for one big problem (dataset-level clustering of millions of tokens);
for the per-image workload this adapter loops over problems, like the sklearn one.

What runs where (the device is taken from the inputs):
- PCA: faiss.PCAMatrix on the CPU for every device (faiss has no GPU PCA), in float32,
  without its subsampling (max_points_per_d is raised to cover every token).
- KMeans: the data are centred (as scikit-learn does), seeded with the greedy k-means++
  of kernels.kmeans (the same draws as the torch backend, so a seed means the same start
  everywhere; faiss's own init is a uniform sample), then faiss.Clustering runs ONE
  Lloyd step per call -- assignment through a faiss IndexFlatL2 (a GpuIndexFlatL2 when
  the inputs are on CUDA), centroid update and faiss's empty-cluster handling -- and
  scikit-learn's stopping rule (centre shift <= tol * mean feature variance) is applied
  between steps, so `tol` and `max_iter` mean what they mean for the other backends.
  Faiss does not subsample here (max_points_per_centroid is raised to N).
- Differences from scikit-learn that parity reports instead of hiding: faiss computes
  in float32 whatever the input dtype, and an empty cluster is re-seeded by splitting a
  large cluster (a perturbed copy of its centroid) where scikit-learn moves the farthest
  point. Started from the same centres, labels agree unless a cluster empties.
"""

from __future__ import annotations

import numpy as np
import torch

from kernels.backends.common import exact_inertia, pca_problem
from kernels.checks import check_finite
from kernels.kmeans import KMeansResult, prepare
from kernels.pca import PCAResult, fix_signs


class FaissBackend:
    name = "faiss"

    def __init__(self, faiss_module):
        """faiss_module: the imported faiss package (resolve_backend imports and checks it)."""
        self.faiss = faiss_module
        self.detail = (
            f"faiss {getattr(faiss_module, '__version__', '?')}: PCA by faiss.PCAMatrix on the CPU; KMeans by "
            "faiss.Clustering Lloyd steps (IndexFlatL2, GpuIndexFlatL2 for CUDA inputs) from torch's k-means++ "
            "seeds, float32, one problem at a time"
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

    def _lloyd_step(self, xi: np.ndarray, wi: np.ndarray | None, centres: np.ndarray, index, seed: int) -> np.ndarray:
        """One faiss assignment + update from `centres` (k, d) float32 -> new centres."""
        faiss = self.faiss
        n, d = xi.shape
        k = centres.shape[0]
        clus = faiss.Clustering(d, k)
        clus.niter = 1
        clus.nredo = 1
        clus.seed = int(seed)
        clus.verbose = False
        clus.max_points_per_centroid = n  # never subsample
        clus.min_points_per_centroid = 1  # no "too few points" warning
        if hasattr(clus, "check_input_data_for_NaNs"):
            clus.check_input_data_for_NaNs = False  # checked once up front
        faiss.copy_array_to_vector(np.ascontiguousarray(centres, dtype=np.float32).ravel(), clus.centroids)
        clus.train(xi, index, wi)
        return faiss.vector_to_array(clus.centroids).reshape(k, d)

    def kmeans(self, x, k, *, n_init, max_iter, tol, seed, init=None, weights=None, keep_restarts=0) -> KMeansResult:
        x32 = x.detach().to("cpu", torch.float32)
        prep = prepare(x32, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, init=init,
                       weights=None if weights is None else weights.detach().cpu(), restart_range=None if init is not None else (0, max(n_init, keep_restarts)))
        xc, w, has_tokens, mean, tol_abs, start = prep.xc, prep.w, prep.has_tokens, prep.mean, prep.tol_abs, prep.centres
        p, n, d = xc.shape
        restarts = start.shape[1]
        best_of = restarts if init is not None else n_init  # the ensemble's extra restarts are not candidates
        ensemble = torch.full((p, keep_restarts, n), -1, dtype=torch.long)

        labels = torch.full((p, n), -1, dtype=torch.long)
        centres = torch.zeros(p, k, d, dtype=torch.float32)
        inertia = torch.zeros(p, dtype=torch.float64)
        n_iter = torch.zeros(p, dtype=torch.long)
        index = self._index(d, x.device)
        weighted = weights is not None
        for i in range(p):
            if not bool(has_tokens[i]):
                continue
            xi = np.ascontiguousarray(xc[i].numpy())
            wi = np.ascontiguousarray(w[i].numpy()) if weighted else None
            best = None
            for r in range(restarts):
                c = start[i, r].numpy()
                steps = 0
                while steps < max_iter:
                    new = self._lloyd_step(xi, wi, c, index, seed)
                    steps += 1
                    shift = float(((new.astype(np.float64) - c) ** 2).sum())
                    c = new
                    if shift <= float(tol_abs[i]):
                        break
                index.reset()
                index.add(np.ascontiguousarray(c, dtype=np.float32))
                _, assigned = index.search(xi, 1)
                lab = torch.as_tensor(assigned[:, 0].astype(np.int64))
                cen = torch.as_tensor(c)
                if r < keep_restarts:
                    ensemble[i, r] = lab
                if r >= best_of:
                    continue
                obj = float(exact_inertia(xc[i].double(), cen.double(), lab, w[i].double()))
                if best is None or obj < best[0]:  # first minimum on ties, as the torch backend
                    best = (obj, lab, cen, steps)
            inertia[i], labels[i], centres[i], n_iter[i] = best
        dev = x.device
        return KMeansResult(
            labels=labels.to(dev),
            centres=(centres + mean[:, None, :]).to(dev, x.dtype),
            inertia=inertia.to(dev, x.dtype),
            n_iter=n_iter.to(dev),
            restart_labels=ensemble.to(dev) if keep_restarts else None,
        )
