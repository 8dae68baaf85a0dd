"""One interface for PCA + KMeans, several implementations.

`torch` (batched, any device, the default), `sklearn` (CPU reference, one problem at a
time); `faiss`, `cuml` and CuPy adapters plug in behind the same two methods. Choice
happens in `resolve_backend` only: a backend asked for by name that cannot run is an
error; `auto` returns what it picked and why, for the caller to log and record.
"""

from __future__ import annotations

from typing import Protocol

import torch

from kernels.kmeans import KMeansResult
from kernels.pca import PCAResult

BACKENDS = ("torch", "sklearn", "faiss", "cuml")


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name and cannot run here (package or device missing)."""


class ClusterBackend(Protocol):
    name: str

    def pca_fit(self, x: torch.Tensor, n_components: int, weights: torch.Tensor | None = None) -> PCAResult:
        """x (P, N, C) -> PCAResult with (P, ...) fields on x's device."""
        ...

    def kmeans(
        self,
        x: torch.Tensor,
        k: int,
        *,
        n_init: int,
        max_iter: int,
        tol: float,
        seed: int,
        init: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> KMeansResult:
        """x (P, N, d) -> KMeansResult with (P, ...) fields on x's device."""
        ...


def resolve_backend(name: str, device: torch.device | str) -> tuple[ClusterBackend, str]:
    """Return (backend, reason). Raises BackendUnavailable for a named backend that cannot run."""
    device = torch.device(device)
    if name == "auto":
        from kernels.backends.torch_backend import TorchBackend

        return TorchBackend(), f"auto: batched torch backend on {device} (one call for all problems)"
    if name == "torch":
        from kernels.backends.torch_backend import TorchBackend

        return TorchBackend(), "requested"
    if name == "sklearn":
        if device.type != "cpu":
            raise BackendUnavailable(f"the sklearn backend runs on the CPU only, but the device is {device}; use --device cpu or --backend torch")
        from kernels.backends.sklearn_backend import SklearnBackend

        return SklearnBackend(), "requested"
    if name in ("faiss", "cuml"):
        raise BackendUnavailable(f"the {name} backend is not built yet in this version; use --backend torch or sklearn")
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
