"""Batched symmetric eigensolvers for the PCA covariance stack (P, C, C), and which runs where.

Why this module exists: torch.linalg.eigh on CUDA hands a stack of matrices larger than
32 x 32 to cuSOLVER one matrix at a time (syevj / syevd in a loop inside ATen; its
truly batched path is gated to n <= 32), so the (7 * B, 256, 256) stack of a batch
costs 7 * B solver launches. The methods here share torch.linalg.eigh's contract --
ascending eigenvalues (P, C) and eigenvectors in the columns (P, C, C), in the input's
dtype and on the input's device -- so `kernels.pca.pca_fit(..., eigh=...)` takes any of
them:

  torch  torch.linalg.eigh where the tensor is. On the CPU this is LAPACK and the
         reference; on CUDA it is the per-matrix loop described above.
  cupy   CuPy's `cupyx.cusolver.syevj` on the whole stack, which is cuSOLVER's batched
         Jacobi solver (syevjBatched): one call for all P matrices, on the GPU, tensors
         shared through DLPack (no copy), on torch's current stream. Needs the `cupy`
         extra and a CUDA tensor. cuSOLVER before CUDA 11.3.1 had a syevjBatched bug
         (cupy#4847); the CUDA 12 wheels the extra names are past it.
  host   one copy of the stack to the CPU, torch.linalg.eigh in float64 there (LAPACK;
         its loop over matrices is in C++), one copy back. Exact and always present,
         but bound by the CPU (about 5-15 ms per 256 x 256 matrix and core).

`auto` (resolve_eigh): a CPU tensor -> torch; a CUDA tensor -> cupy when CuPy imports
and has syevj, else host. We chose host over an in-torch Jacobi or subspace iteration
for the no-CuPy case because it is exact (parity is judged against LAPACK) and has no
convergence knobs; `datr bench kernels --device cuda` times all three side by side so
the choice can be revisited with figures.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from kernels.choices import EIGH_METHODS

Eigh = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (P, C, C) -> ascending evals (P, C), evecs (P, C, C)


class EighUnavailable(RuntimeError):
    """An eigensolver was asked for by name and cannot run here."""


def eigh_torch(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.linalg.eigh where a (P, C, C) lives."""
    return torch.linalg.eigh(a)


def eigh_host(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 LAPACK on the CPU for a (P, C, C) on any device; results in a's dtype and device."""
    evals, evecs = torch.linalg.eigh(a.detach().to("cpu", torch.float64))
    return evals.to(a.device, a.dtype), evecs.to(a.device, a.dtype)


def import_cupy_syevj():
    """(cupy, cupyx.cusolver) or EighUnavailable with the fix, in one line."""
    try:
        cupy = importlib.import_module("cupy")
        cusolver = importlib.import_module("cupyx.cusolver")
    except Exception as err:  # missing, or present but broken (driver / ABI mismatch)
        raise EighUnavailable(
            f"the cupy eigensolver needs CuPy ({type(err).__name__}: {str(err).strip()[:120]}); "
            "install the cupy extra: pip install 'sam3-datr[cupy]'"
        ) from None
    if not cusolver.check_availability("syevj"):
        raise EighUnavailable("this CuPy/CUDA build has no cuSOLVER syevj; upgrade CUDA or use --eigh host")
    return cupy, cusolver


def eigh_cupy(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cuSOLVER syevjBatched through CuPy on a CUDA (P, C, C) stack; no copy in or out."""
    if a.device.type != "cuda":
        raise EighUnavailable(f"the cupy eigensolver needs a CUDA tensor, got one on {a.device}")
    cupy, cusolver = import_cupy_syevj()
    if a.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"eigh_cupy takes float32 or float64, got {a.dtype}")
    squeeze = a.ndim == 2
    stack = (a[None] if squeeze else a).contiguous()
    with cupy.cuda.Device(a.device.index), cupy.cuda.ExternalStream(torch.cuda.current_stream(a.device).cuda_stream):
        # a 3-D input goes to syevjBatched (cupyx.cusolver._syevj_batched); symmetric, so row-major == column-major
        w, v = cusolver.syevj(cupy.from_dlpack(stack), UPLO="L", with_eigen_vector=True)
        evals, evecs = torch.from_dlpack(w), torch.from_dlpack(v).contiguous()
    if squeeze:
        evals, evecs = evals[0], evecs[0]
    return evals, evecs


def eigh_status(method: str, device: torch.device | str) -> tuple[bool, str]:
    """Can `method` run for tensors on `device`? -> (ok, one-line reason)."""
    device = torch.device(device)
    if method == "torch":
        if device.type == "cuda":
            return True, "torch.linalg.eigh on CUDA (one solver call per matrix above 32 x 32)"
        return True, f"torch.linalg.eigh on {device.type} (LAPACK)"
    if method == "host":
        return True, "float64 LAPACK on the CPU (one copy each way)"
    if method == "cupy":
        if device.type != "cuda":
            return False, f"the cupy eigensolver runs on CUDA tensors only, the device is {device}"
        try:
            import_cupy_syevj()
        except EighUnavailable as err:
            return False, str(err)
        return True, "cuSOLVER syevjBatched through CuPy (one call for the whole stack)"
    return False, f"unknown eigensolver {method!r}; choose one of auto, {', '.join(EIGH_METHODS)}"


def resolve_eigh(method: str, device: torch.device | str) -> tuple[str, str]:
    """Turn `method` (auto or one of EIGH_METHODS) into a concrete method for `device`.

    Returns (method, reason). A named method that cannot run raises EighUnavailable.
    """
    device = torch.device(device)
    if method == "auto":
        if device.type != "cuda":
            return "torch", eigh_status("torch", device)[1]
        ok, why = eigh_status("cupy", device)
        if ok:
            return "cupy", why
        return "host", f"float64 LAPACK on the CPU (no GPU batched eigensolver: {why})"
    ok, why = eigh_status(method, device)
    if not ok:
        raise EighUnavailable(why)
    return method, why


def eigh_function(method: str) -> Eigh:
    """The callable for a concrete method; `auto` picks per call from the tensor's device."""
    if method == "auto":
        return lambda a: eigh_function(resolve_eigh("auto", a.device)[0])(a)
    table = {"torch": eigh_torch, "host": eigh_host, "cupy": eigh_cupy}
    if method not in table:
        raise EighUnavailable(f"unknown eigensolver {method!r}; choose one of auto, {', '.join(EIGH_METHODS)}")
    return table[method]
