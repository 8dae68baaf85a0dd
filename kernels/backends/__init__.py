"""One interface for PCA + KMeans, several implementations.

`torch` (batched, any device, the default), `sklearn` (CPU reference, one problem at a
time), `faiss` (faiss.PCAMatrix + faiss.Clustering per problem; CPU index, or a GPU
index for CUDA inputs), `cuml` (RAPIDS cuML per problem, CUDA only). The torch backend
takes its PCA eigensolver from kernels/eigh.py (CuPy's batched syevj on CUDA when CuPy
is installed). Choice happens in `resolve_backend` only: a backend asked for by name
that cannot run is an error that names the fix; `auto` returns what it picked and why,
for the caller to log and record. Optional packages are imported here, on demand, and
nowhere at module import.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import torch

from kernels.choices import BACKENDS
from kernels.eigh import EighUnavailable, resolve_eigh
from kernels.kmeans import KMeansResult
from kernels.pca import PCAResult

__all__ = ["BACKENDS", "BackendUnavailable", "ClusterBackend", "backend_status", "resolve_backend"]

INSTALL_HINTS = {
    "faiss": "pip install 'sam3-datr[faiss]' (faiss-cpu)",
    "faiss-gpu": "install a GPU build of faiss (pip install 'sam3-datr[faiss-gpu]', or conda install -c pytorch -c nvidia faiss-gpu)",
    "cuml": "pip install 'sam3-datr[cuml]' --extra-index-url=https://pypi.nvidia.com (RAPIDS cuML for CUDA 12)",
    "cupy": "pip install 'sam3-datr[cupy]' (cupy-cuda12x)",
}


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name and cannot run here (package or device missing)."""


class ClusterBackend(Protocol):
    name: str  # the choice it answers to: torch, sklearn, faiss, cuml
    detail: str  # what runs each stage, where, in which precision (written with the results)

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
        keep_restarts: int = 0,
    ) -> KMeansResult:
        """x (P, N, d) -> KMeansResult with (P, ...) fields on x's device; keep_restarts = S > 0 also
        returns the partitions of S single-start runs (restart_labels (P, S, N), the seed ensemble)."""
        ...


def import_optional(module: str, extra: str, purpose: str):
    """Import an optional package or raise BackendUnavailable naming the extra to install."""
    try:
        return importlib.import_module(module)
    except Exception as err:  # missing, or present but broken (no driver, ABI mismatch)
        message = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise BackendUnavailable(
            f"{purpose} needs the {module} package, which does not import here ({type(err).__name__}: {message}); "
            f"{INSTALL_HINTS[extra]}"
        ) from None


def cuda_present(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


def make_faiss(device: torch.device):
    from kernels.backends.faiss_backend import FaissBackend

    faiss = import_optional("faiss", "faiss", "the faiss backend")
    if device.type == "cuda":
        if not cuda_present(device):
            raise BackendUnavailable(f"the device is {device} but CUDA is not available here; use --device cpu")
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if gpus < 1:
            raise BackendUnavailable(
                f"faiss {getattr(faiss, '__version__', '')} here has no GPU support (faiss.get_num_gpus() == {gpus}); "
                f"{INSTALL_HINTS['faiss-gpu']}, or use --device cpu"
            )
    elif device.type != "cpu":
        raise BackendUnavailable(f"the faiss backend runs on cpu or cuda, not {device}")
    return FaissBackend(faiss)


def make_cuml(device: torch.device):
    from kernels.backends.cuml_backend import CumlBackend

    if device.type != "cuda":
        raise BackendUnavailable(
            f"the cuml backend runs on CUDA only, but the device is {device}; use --device cuda, "
            "or --backend torch / faiss / sklearn on the CPU"
        )
    if not cuda_present(device):
        raise BackendUnavailable(f"the device is {device} but CUDA is not available here; use --device cpu")
    cuml = import_optional("cuml", "cuml", "the cuml backend")
    cupy = import_optional("cupy", "cupy", "the cuml backend")
    return CumlBackend(cuml, cupy)


def make_torch(device: torch.device, eigh: str):
    from kernels.backends.torch_backend import TorchBackend

    try:
        method, why = resolve_eigh(eigh, device)
    except EighUnavailable as err:
        raise BackendUnavailable(f"eigensolver {eigh}: {err}") from None
    return TorchBackend(eigh=method), f"eigensolver {method}: {why}"


def resolve_backend(name: str, device: torch.device | str, *, eigh: str = "auto") -> tuple[ClusterBackend, str]:
    """Return (backend, reason). Raises BackendUnavailable for a named backend that cannot run.

    eigh: the torch backend's PCA eigensolver, auto or one of kernels.eigh.EIGH_METHODS.
    """
    device = torch.device(device)
    if name == "auto":
        backend, why = make_torch(device, eigh)
        return backend, f"auto: batched torch backend on {device} (one call for all problems); {why}"
    if name == "torch":
        backend, why = make_torch(device, eigh)
        return backend, f"requested; {why}"
    if name == "sklearn":
        if device.type != "cpu":
            raise BackendUnavailable(f"the sklearn backend runs on the CPU only, but the device is {device}; use --device cpu or --backend torch")
        from kernels.backends.sklearn_backend import SklearnBackend

        return SklearnBackend(), "requested"
    if name == "faiss":
        backend = make_faiss(device)
        return backend, f"requested; {backend.detail}"
    if name == "cuml":
        backend = make_cuml(device)
        return backend, f"requested; {backend.detail}"
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


def backend_status(name: str, device: torch.device | str, *, eigh: str = "auto") -> tuple[bool, str]:
    """(runs here, one-line reason) without raising: for `datr env`, parity and benchmarks."""
    try:
        _, reason = resolve_backend(name, device, eigh=eigh)
    except BackendUnavailable as err:
        return False, str(err)
    return True, reason
