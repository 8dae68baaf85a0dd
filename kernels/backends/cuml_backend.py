"""RAPIDS cuML, one problem at a time on the GPU: cuml.PCA and cuml.KMeans.

The per-problem GPU library, as a yardstick for the batched torch path and for
dataset-level problems. Tensors go to CuPy and back through DLPack (no copy).

- PCA: cuml.PCA(svd_solver="full"), an eigendecomposition of the covariance -- the
  same route as scikit-learn's covariance_eigh; components sign-fixed as everywhere.
  A token mask fits the masked subset; real-valued weights are refused.
- KMeans: cuml.KMeans with its own seeding when no init is given ("k-means++" is
  cuML's scalable k-means++, k-means||), or from the given centres with n_init=1 per
  restart. cuML's `tol` is a relative tolerance on the change of inertia, not
  scikit-learn's centre shift, so it can stop one iteration apart; from the same
  centres with tol=0 both run to a fixed point. Inertia is recomputed here from exact
  differences, weighted, so all backends report the same quantity.
"""

from __future__ import annotations

import torch

from kernels.backends.common import exact_inertia, pca_problem
from kernels.checks import check_finite
from kernels.kmeans import KMeansResult
from kernels.pca import PCAResult, fix_signs


class CumlBackend:
    name = "cuml"

    def __init__(self, cuml_module, cupy_module):
        """cuml_module / cupy_module: the imported packages (resolve_backend imports and checks them)."""
        self.cuml = cuml_module
        self.cupy = cupy_module
        self.detail = (
            f"cuML {getattr(cuml_module, '__version__', '?')}: cuml.PCA(svd_solver='full') and cuml.KMeans, "
            "one problem at a time on the GPU (DLPack in and out)"
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
        from cuml.cluster import KMeans

        assert x.ndim == 3, f"x must be (P, N, d), got {tuple(x.shape)}"
        p, n, d = x.shape
        if k < 1 or k > n:
            raise ValueError(f"k must be in [1, {n}] (the tokens per problem), got {k}")
        w = torch.ones(p, n, dtype=x.dtype, device=x.device) if weights is None else weights.to(x.dtype)
        check_finite((x * x).sum(-1), "KMeans input")
        starts = None
        if init is not None:
            starts = init.to(x.dtype)
            starts = starts[:, None] if starts.ndim == 3 else starts
            assert starts.shape[0] == p and starts.shape[2:] == (k, d), f"init must be (P, [n_init,] k, d), got {tuple(init.shape)}"
        labels = torch.full((p, n), -1, dtype=torch.long, device=x.device)
        centres = torch.zeros(p, k, d, dtype=x.dtype, device=x.device)
        inertia = torch.zeros(p, dtype=x.dtype, device=x.device)
        n_iter = torch.zeros(p, dtype=torch.long, device=x.device)
        ensemble = torch.full((p, keep_restarts, n), -1, dtype=torch.long, device=x.device)
        with self._device(x):
            for i in range(p):
                if not bool(w[i].sum() > 0):
                    continue
                xi, wi = self._to_cupy(x[i]), (None if weights is None else self._to_cupy(w[i]))
                runs = [("k-means++", n_init)] if starts is None else [(self._to_cupy(s), 1) for s in starts[i]]
                best = None
                for start, restarts in runs:
                    km = KMeans(n_clusters=k, init=start, n_init=restarts, max_iter=max_iter, tol=tol,
                                random_state=seed, output_type="cupy", verbose=False)
                    km.fit(xi, sample_weight=wi)
                    lab = torch.from_dlpack(km.labels_).long()
                    cen = torch.from_dlpack(km.cluster_centers_).to(x.dtype)
                    obj = exact_inertia(x[i], cen, lab, w[i])
                    if best is None or bool(obj < best[0]):
                        best = (obj, lab, cen, int(km.n_iter_))
                inertia[i], labels[i], centres[i], n_iter[i] = best
                for r in range(keep_restarts):  # the seed ensemble: single-start runs, seed + r or the given starts
                    start = "k-means++" if starts is None else self._to_cupy(starts[i, r])
                    km = KMeans(n_clusters=k, init=start, n_init=1, max_iter=max_iter, tol=tol,
                                random_state=seed + r, output_type="cupy", verbose=False)
                    km.fit(xi, sample_weight=wi)
                    ensemble[i, r] = torch.from_dlpack(km.labels_).long()
        return KMeansResult(labels=labels, centres=centres, inertia=inertia, n_iter=n_iter,
                            restart_labels=ensemble if keep_restarts else None)
