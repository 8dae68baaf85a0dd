"""Batched eigensolvers (kernels/eigh.py) against torch.linalg.eigh, and how one is chosen."""

import sys

import pytest
import torch

from bench.synthetic import token_maps
from kernels.eigh import EighUnavailable, eigh_function, eigh_host, eigh_status, resolve_eigh
from kernels.pca import pca_fit, subspace_agreement, weighted_moments


def covariances(dtype=torch.float64, p=5, c=24):
    tokens, _ = token_maps(p, side=16, channels=c, seed=4)
    _, cov, _ = weighted_moments(tokens.to(dtype), None)
    return 0.5 * (cov + cov.transpose(1, 2))  # (P, C, C)


def assert_same_decomposition(evals, evecs, a, rtol):
    """Eigenvalues match LAPACK's; the vectors are orthonormal and rebuild the matrix."""
    ref_vals, _ = torch.linalg.eigh(a.double())
    scale = ref_vals.abs().amax(-1, keepdim=True)
    assert float(((evals.double() - ref_vals).abs() / scale).max()) <= rtol
    v = evecs.double()
    eye = torch.eye(a.shape[-1], dtype=torch.float64).expand_as(v)
    assert float((v.transpose(1, 2) @ v - eye).abs().max()) <= 10 * rtol
    rebuilt = v @ torch.diag_embed(evals.double()) @ v.transpose(1, 2)
    assert float(((rebuilt - a.double()).abs().amax((-1, -2)) / scale[:, 0]).max()) <= 10 * rtol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_host_eigh_matches_lapack_and_keeps_dtype(dtype):
    a = covariances(dtype)
    evals, evecs = eigh_host(a)
    assert evals.dtype == dtype and evecs.dtype == dtype and evals.device == a.device
    assert_same_decomposition(evals, evecs, a, rtol=1e-5 if dtype == torch.float32 else 1e-12)
    assert bool((evals[:, 1:] >= evals[:, :-1]).all()), "eigenvalues must ascend, as torch.linalg.eigh's"


def test_pca_with_the_host_solver_equals_the_default():
    tokens, _ = token_maps(3, side=16, channels=24, seed=5)
    x = tokens.double()
    ref = pca_fit(x, 6)
    host = pca_fit(x, 6, eigh=eigh_host)
    torch.testing.assert_close(host.explained_variance_ratio, ref.explained_variance_ratio, rtol=1e-10, atol=1e-12)
    assert float(subspace_agreement(host.components, ref.components).min()) > 1 - 1e-10


def test_auto_on_the_cpu_is_torch_and_on_cuda_without_cupy_is_host(monkeypatch):
    assert resolve_eigh("auto", "cpu")[0] == "torch"
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    method, why = resolve_eigh("auto", "cuda")
    assert method == "host" and "CuPy" in why and "sam3-datr[cupy]" in why


def test_named_cupy_that_cannot_run_is_an_error_naming_the_fix(monkeypatch):
    with pytest.raises(EighUnavailable, match="CUDA tensors only"):
        resolve_eigh("cupy", "cpu")
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(EighUnavailable, match=r"pip install 'sam3-datr\[cupy\]'"):
        resolve_eigh("cupy", "cuda")
    with pytest.raises(EighUnavailable, match="unknown eigensolver"):
        resolve_eigh("jacobi", "cpu")
    assert eigh_status("host", "cuda")[0] and eigh_status("torch", "cuda")[0]


def test_auto_function_follows_the_tensor_device():
    a = covariances(torch.float64, p=2, c=8)
    evals, evecs = eigh_function("auto")(a)
    ref_vals, ref_vecs = torch.linalg.eigh(a)
    torch.testing.assert_close(evals, ref_vals)
    torch.testing.assert_close(evecs.abs(), ref_vecs.abs())


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cupy", "host", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_solvers_match_lapack(method, dtype):
    ok, why = eigh_status(method, "cuda")
    if not ok:
        pytest.skip(why)
    a = covariances(dtype, p=6, c=64).cuda()
    evals, evecs = eigh_function(method)(a)
    assert evals.device.type == "cuda" and evecs.dtype == dtype
    assert_same_decomposition(evals.cpu(), evecs.cpu(), a.cpu(), rtol=2e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.gpu
def test_cupy_solver_handles_the_design_shape_in_one_call():
    ok, why = eigh_status("cupy", "cuda")
    if not ok:
        pytest.skip(why)
    x = torch.randn(14, 300, 256, device="cuda", dtype=torch.float64)
    a = x.transpose(1, 2) @ x / 299  # (14, 256, 256): above torch's batched 32 x 32 gate
    evals, evecs = eigh_function("cupy")(a)
    assert_same_decomposition(evals.cpu(), evecs.cpu(), a.cpu(), rtol=1e-10)
