"""scikit-learn, one problem at a time on the CPU: the reference the others are judged by."""

from __future__ import annotations

import numpy as np
import torch

from kernels.kmeans import KMeansResult
from kernels.pca import PCAResult, fix_signs


class SklearnBackend:
    name = "sklearn"
    detail = "scikit-learn PCA(svd_solver='covariance_eigh') and KMeans(algorithm='lloyd'), one problem at a time on the CPU"

    def pca_fit(self, x: torch.Tensor, n_components: int, weights: torch.Tensor | None = None) -> PCAResult:
        from sklearn.decomposition import PCA

        arr = x.detach().cpu().numpy()
        sel = None if weights is None else weights.detach().cpu().numpy()
        if sel is not None and sel.dtype != bool and not np.isin(sel, (0, 1)).all():
            raise ValueError("the sklearn PCA reference takes a 0/1 token mask, not real-valued weights")
        means, comps, var, ratio, count = [], [], [], [], []
        for i in range(arr.shape[0]):
            xi = arr[i] if sel is None else arr[i][sel[i].astype(bool)]
            pca = PCA(n_components=n_components, svd_solver="covariance_eigh").fit(xi)
            means.append(pca.mean_)
            comps.append(pca.components_)
            var.append(pca.explained_variance_)
            ratio.append(pca.explained_variance_ratio_)
            count.append(xi.shape[0])

        def t(a):
            return torch.as_tensor(np.stack(a)).to(x.device)

        return PCAResult(
            mean=t(means),
            components=fix_signs(t(comps)),
            explained_variance=t(var),
            explained_variance_ratio=t(ratio),
            n_samples=torch.tensor(count, dtype=x.dtype, device=x.device),
        )

    def kmeans(self, x, k, *, n_init, max_iter, tol, seed, init=None, weights=None, keep_restarts=0) -> KMeansResult:
        from sklearn.cluster import KMeans

        arr = x.detach().cpu().numpy()
        w = None if weights is None else weights.detach().cpu().numpy().astype(arr.dtype)
        init_np = None if init is None else init.detach().cpu().numpy()
        labels, centres, inertia, n_iter, ensemble = [], [], [], [], []
        for i in range(arr.shape[0]):
            start = "k-means++" if init_np is None else init_np[i]
            km = KMeans(
                n_clusters=k, init=start, n_init=n_init if init_np is None else 1,
                max_iter=max_iter, tol=tol, random_state=seed, algorithm="lloyd",
            )
            km.fit(arr[i], sample_weight=None if w is None else w[i])
            labels.append(km.labels_.astype(np.int64))
            centres.append(km.cluster_centers_)
            inertia.append(km.inertia_)
            n_iter.append(km.n_iter_)
            if keep_restarts:
                ensemble.append(self._single_starts(arr[i], None if w is None else w[i], k, keep_restarts, max_iter, tol, seed,
                                                    None if init_np is None else init_np[i]))
        return KMeansResult(
            labels=torch.as_tensor(np.stack(labels)).to(x.device),
            centres=torch.as_tensor(np.stack(centres)).to(x.device),
            inertia=torch.as_tensor(np.array(inertia, dtype=arr.dtype)).to(x.device),
            n_iter=torch.as_tensor(np.array(n_iter)).to(x.device),
            restart_labels=torch.as_tensor(np.stack(ensemble)).to(x.device) if keep_restarts else None,
        )

    @staticmethod
    def _single_starts(xi: np.ndarray, wi: np.ndarray | None, k: int, count: int, max_iter: int, tol: float, seed: int,
                       init: np.ndarray | None) -> np.ndarray:
        """The seed ensemble: `count` single-start runs, (count, N) labels. Starts drawn one after
        another from one RandomState(seed) with sklearn's k-means++ on the centred data (as its
        own restarts are), or the given starts (init (R, k, d) or (k, d))."""
        from sklearn.cluster import KMeans, kmeans_plusplus

        mean = np.average(xi, axis=0, weights=wi)
        rng = np.random.RandomState(seed)
        out = []
        for r in range(count):
            if init is None:
                start = kmeans_plusplus(xi - mean, k, sample_weight=wi, random_state=rng)[0] + mean
            else:
                start = init[r] if init.ndim == 3 else init
            km = KMeans(n_clusters=k, init=start, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd")
            out.append(km.fit(xi, sample_weight=wi).labels_.astype(np.int64))
        return np.stack(out)
