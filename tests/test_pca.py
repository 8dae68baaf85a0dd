"""PCA kernel against scikit-learn's covariance_eigh solver, and its edge cases."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from bench.synthetic import token_maps
from kernels.pca import fix_signs, pca_fit, pca_transform, subspace_agreement, weighted_moments


@pytest.fixture(scope="module")
def structured():
    tokens, _ = token_maps(6, side=24, channels=48, seed=3)
    return tokens  # (6, 576, 48) float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_explained_variance_and_subspace_match_sklearn(structured, dtype):
    x = structured.to(dtype)
    d = 8
    fit = pca_fit(x, d)
    for i in range(x.shape[0]):
        ref = PCA(n_components=d, svd_solver="covariance_eigh").fit(x[i].numpy())
        np.testing.assert_allclose(fit.explained_variance_ratio[i].numpy(), ref.explained_variance_ratio_, atol=1e-5, rtol=0)
        np.testing.assert_allclose(fit.mean[i].numpy(), ref.mean_, atol=1e-5 if dtype == torch.float32 else 1e-12)
        ref_comp = fix_signs(torch.as_tensor(ref.components_)[None]).to(dtype)
        agreement = subspace_agreement(fit.components[i : i + 1], ref_comp)
        assert float(agreement) >= 0.999, f"problem {i}: subspace agreement {float(agreement)}"
        # projections agree once both use the same sign convention
        z_ref = (x[i].numpy() - ref.mean_) @ ref_comp[0].numpy().T
        z = pca_transform(x, fit)[i].numpy()
        np.testing.assert_allclose(z[:, :3], z_ref[:, :3], atol=2e-3 if dtype == torch.float32 else 1e-8)


def test_components_are_orthonormal_and_sign_fixed(structured):
    fit = pca_fit(structured.double(), 6)
    gram = fit.components @ fit.components.transpose(1, 2)
    torch.testing.assert_close(gram, torch.eye(6, dtype=torch.float64).expand_as(gram), atol=1e-10, rtol=0)
    idx = fit.components.abs().argmax(-1, keepdim=True)
    assert bool((torch.gather(fit.components, -1, idx) > 0).all())
    assert bool((fit.explained_variance[:, :-1] >= fit.explained_variance[:, 1:]).all())


def test_mask_equals_fitting_the_subset(structured):
    x = structured.double()
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[:, ::3] = True
    mask[2, :] = False
    mask[2, :50] = True
    masked = pca_fit(x, 5, weights=mask)
    for i in range(x.shape[0]):
        sub = pca_fit(x[i : i + 1][:, mask[i]], 5)
        torch.testing.assert_close(masked.explained_variance[i], sub.explained_variance[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(masked.components[i], sub.components[0], rtol=1e-7, atol=1e-9)
        assert float(masked.n_samples[i]) == int(mask[i].sum())


def test_constant_features_and_empty_subset_give_zero_ratio_not_nan():
    x = torch.ones(2, 100, 6)
    fit = pca_fit(x, 3)
    assert bool(torch.isfinite(fit.components).all()) and bool((fit.explained_variance_ratio == 0).all())
    y = torch.randn(2, 100, 6)
    empty = torch.zeros(2, 100, dtype=torch.bool)
    fit = pca_fit(y, 3, weights=empty)
    assert bool(torch.isfinite(fit.components).all()) and bool((fit.explained_variance_ratio == 0).all())


def test_one_constant_channel_keeps_the_others(structured):
    x = structured.double().clone()
    x[:, :, 0] = 7.0
    fit = pca_fit(x, 4)
    assert bool((fit.components[:, :, 0].abs() < 1e-8).all())
    for i in range(x.shape[0]):
        ref = PCA(n_components=4, svd_solver="covariance_eigh").fit(x[i].numpy())
        np.testing.assert_allclose(fit.explained_variance_ratio[i].numpy(), ref.explained_variance_ratio_, atol=1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_is_a_clear_error(bad):
    x = torch.randn(3, 50, 4)
    x[2, 7, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or inf.*problems \[2\]"):
        pca_fit(x, 2)


def test_out_of_range_components_rejected():
    with pytest.raises(ValueError, match="n_components"):
        pca_fit(torch.randn(1, 10, 4), 5)


def test_covariance_of_data_far_from_the_origin_matches_float64(monkeypatch):
    """float32 tokens with mean 1e3 and eigenvalues [.99, .24, .039, .0097]: centring first keeps every
    eigenvalue (the one-pass X^T X - n m m^T gave [1.06, .38, .19, 0]); the chunked centred copy gives
    the same covariance as one block."""
    import kernels.pca as pca_module

    gen = torch.Generator().manual_seed(0)
    evals = torch.tensor([0.99, 0.24, 0.039, 0.0097], dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))[0]
    z = torch.randn(2, 20000, 4, generator=gen, dtype=torch.float64)
    z = (z - z.mean(1, keepdim=True)) @ torch.linalg.cholesky(torch.cov(z[0].T)).inverse().T  # exact unit covariance
    x = (1e3 + (z * evals.sqrt()) @ basis.T).float()  # (2, 20000, 4) float32
    fit = pca_fit(x, 4)
    ref = PCA(n_components=4, svd_solver="covariance_eigh").fit(x[0].double().numpy())  # the same float32 data, in float64
    np.testing.assert_allclose(fit.explained_variance[0].double().numpy(), ref.explained_variance_, rtol=2e-4)
    np.testing.assert_allclose(ref.explained_variance_, evals.numpy(), rtol=1e-3)  # the float32 data hold them
    _, cov, _ = weighted_moments(x, None)
    _, cov64, _ = weighted_moments(x.double(), None)
    assert float((cov.double() - cov64).abs().max()) < 1e-5
    old_way = torch.baddbmm(x.transpose(1, 2) @ x, x.mean(1)[:, :, None], x.mean(1)[:, None, :], alpha=-20000.0) / 19999
    assert float((old_way.double() - cov64).abs().max()) > 1e-2  # what the test guards against
    monkeypatch.setattr(pca_module, "CENTRED_CHUNK_ELEMENTS", 2 * 4 * 777)  # blocks of 777 tokens
    _, cov_blocks, _ = weighted_moments(x, None)
    assert float((cov_blocks.double() - cov64).abs().max()) < 1e-5
