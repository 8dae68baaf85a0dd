"""Backend choice (resolve_backend) and the faiss / cuml adapters against scikit-learn.

faiss-cpu runs here when installed (the faiss extra); the GPU adapters run in
`gpu`-marked tests, skipped with the reason where CUDA or the package is absent.
Their availability logic is checked on the CPU by hiding or faking the packages.
"""

import sys
import types

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from bench.synthetic import scope_problems, token_maps
from kernels.backends import BACKENDS, BackendUnavailable, backend_status, resolve_backend
from kernels.backends.sklearn_backend import SklearnBackend
from kernels.kmeans import kmeans_plusplus
from kernels.pca import pca_transform, subspace_agreement

D, K = 8, 4


@pytest.fixture(scope="module")
def problems():
    tokens, classes = token_maps(1, side=24, channels=32, seed=7)
    return scope_problems(tokens, classes)[:4].double()  # (4, 576, 32)


@pytest.fixture(scope="module")
def reference(problems):
    fit = SklearnBackend().pca_fit(problems, D)
    z = pca_transform(problems, fit)
    w = torch.ones(z.shape[:2], dtype=z.dtype)
    init = kmeans_plusplus(z, w, K, 1, 11)[:, 0]
    return {"fit": fit, "z": z, "init": init}


@pytest.fixture
def faiss_backend():
    faiss = pytest.importorskip("faiss", reason="faiss is not installed (the faiss extra)")
    faiss.omp_set_num_threads(1)
    return resolve_backend("faiss", "cpu")[0]


# -- choice ----------------------------------------------------------------------------------

def test_auto_and_torch_name_what_they_chose():
    backend, reason = resolve_backend("auto", "cpu")
    assert backend.name == "torch" and backend.eigh == "torch"
    assert reason.startswith("auto: batched torch backend on cpu") and "eigensolver torch" in reason
    backend, reason = resolve_backend("torch", "cpu", eigh="host")
    assert backend.eigh == "host" and reason.startswith("requested; eigensolver host")
    assert all(isinstance(getattr(resolve_backend(n, "cpu")[0], "detail", None), str) for n in ("torch", "sklearn"))


def test_unknown_or_misplaced_backends_are_errors_with_the_fix(monkeypatch):
    with pytest.raises(BackendUnavailable, match="unknown backend 'nope'"):
        resolve_backend("nope", "cpu")
    with pytest.raises(BackendUnavailable, match="CPU only"):
        resolve_backend("sklearn", "cuda")
    with pytest.raises(BackendUnavailable, match="runs on CUDA only.*--device cuda"):
        resolve_backend("cuml", "cpu")
    with pytest.raises(BackendUnavailable, match="eigensolver cupy"):
        resolve_backend("torch", "cpu", eigh="cupy")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("faiss", "cuml"):
        with pytest.raises(BackendUnavailable, match="CUDA is not available here; use --device cpu"):
            resolve_backend(name, "cuda")


def test_missing_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setitem(sys.modules, "cuml", None)
    with pytest.raises(BackendUnavailable, match=r"faiss package.*pip install 'sam3-datr\[faiss\]'"):
        resolve_backend("faiss", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(BackendUnavailable, match=r"cuml package.*sam3-datr\[cuml\]"):
        resolve_backend("cuml", "cuda")
    ok, why = backend_status("faiss", "cpu")
    assert not ok and "sam3-datr[faiss]" in why


def test_faiss_without_gpu_support_on_cuda_says_how_to_get_it(monkeypatch):
    fake = types.SimpleNamespace(get_num_gpus=lambda: 0, __version__="0.0-test")
    monkeypatch.setitem(sys.modules, "faiss", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(BackendUnavailable, match=r"no GPU support.*faiss-gpu.*or use --device cpu"):
        resolve_backend("faiss", "cuda:0")
    assert resolve_backend("faiss", "cpu")[0].name == "faiss"  # the CPU index needs no GPU


def test_every_listed_backend_reports_a_status():
    for name in BACKENDS:
        ok, why = backend_status(name, "cpu")
        assert isinstance(ok, bool) and why


# -- faiss on the CPU ---------------------------------------------------------------------------

def test_faiss_pca_matches_sklearn(faiss_backend, problems, reference):
    fit = faiss_backend.pca_fit(problems, D)
    ref = reference["fit"]
    assert fit.components.dtype == problems.dtype and fit.components.shape == ref.components.shape
    assert float((fit.explained_variance_ratio - ref.explained_variance_ratio).abs().max()) <= 1e-5
    assert float(subspace_agreement(fit.components, ref.components).min()) >= 0.999
    torch.testing.assert_close(fit.explained_variance, ref.explained_variance, rtol=1e-4, atol=0)
    torch.testing.assert_close(fit.mean, ref.mean, rtol=0, atol=1e-4)
    assert torch.equal(fit.n_samples, ref.n_samples)


def test_faiss_pca_mask_is_the_subset_and_weights_are_refused(faiss_backend, problems):
    mask = torch.zeros(problems.shape[:2], dtype=torch.bool)
    mask[:, ::2] = True
    masked = faiss_backend.pca_fit(problems, D, weights=mask)
    sub = faiss_backend.pca_fit(problems[:, ::2].contiguous(), D)
    torch.testing.assert_close(masked.explained_variance_ratio, sub.explained_variance_ratio)
    assert float(masked.n_samples[0]) == problems.shape[1] // 2
    with pytest.raises(ValueError, match="0/1 token mask"):
        faiss_backend.pca_fit(problems, D, weights=torch.full(problems.shape[:2], 0.5, dtype=problems.dtype))


def test_faiss_kmeans_from_shared_centres_gives_sklearn_labels(faiss_backend, reference):
    z, init = reference["z"], reference["init"]
    mine = faiss_backend.kmeans(z, K, n_init=1, max_iter=300, tol=0.0, seed=0, init=init)
    ref = SklearnBackend().kmeans(z, K, n_init=1, max_iter=300, tol=0.0, seed=0, init=init)
    for a, b in zip(mine.labels.numpy(), ref.labels.numpy(), strict=True):
        assert adjusted_rand_score(a, b) == 1.0
    assert mine.n_iter.tolist() == ref.n_iter.tolist()  # sklearn's stopping rule between faiss steps
    torch.testing.assert_close(mine.inertia, ref.inertia, rtol=1e-5, atol=0)
    torch.testing.assert_close(mine.centres, ref.centres, rtol=0, atol=1e-4)


def test_faiss_kmeans_own_seeding_is_within_one_percent_of_sklearn(faiss_backend, reference):
    z = reference["z"]
    mine = faiss_backend.kmeans(z, K, n_init=3, max_iter=300, tol=1e-4, seed=2)
    ref = SklearnBackend().kmeans(z, K, n_init=3, max_iter=300, tol=1e-4, seed=2)
    assert float(np.median((mine.inertia / ref.inertia).numpy())) <= 1.01
    # the reported inertia is the weighted distance to the returned centres
    diff = z - torch.gather(mine.centres, 1, mine.labels[:, :, None].expand_as(z))
    torch.testing.assert_close(mine.inertia, (diff * diff).sum((-1, -2)), rtol=1e-5, atol=0)


def test_faiss_kmeans_zero_weights_are_a_subset_and_empty_problems_are_defined(faiss_backend, reference):
    z, init = reference["z"][:2], reference["init"][:2]
    keep = torch.zeros(z.shape[:2], dtype=torch.bool)
    keep[:, 100:] = True
    keep[1] = False  # a problem with no weighted token
    weighted = faiss_backend.kmeans(z, K, n_init=1, max_iter=300, tol=0.0, seed=0, init=init, weights=keep)
    subset = faiss_backend.kmeans(z[:1, 100:], K, n_init=1, max_iter=300, tol=0.0, seed=0, init=init[:1])
    torch.testing.assert_close(weighted.centres[0], subset.centres[0], rtol=0, atol=1e-5)
    assert torch.equal(weighted.labels[0, 100:], subset.labels[0])
    assert bool((weighted.labels[1] == -1).all()) and float(weighted.inertia[1]) == 0 and int(weighted.n_iter[1]) == 0


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
def test_faiss_kmeans_on_duplicates_and_an_emptied_cluster_stays_sound(faiss_backend):
    # 3 distinct points repeated, k = 4, two identical starting centres: one cluster must empty
    base = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    x = base.repeat(40, 1)[None]  # (1, 120, 2)
    init = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]], dtype=torch.float64)
    out = faiss_backend.kmeans(x, 4, n_init=1, max_iter=50, tol=0.0, seed=0, init=init)
    ref = SklearnBackend().kmeans(x, 4, n_init=1, max_iter=50, tol=0.0, seed=0, init=init)
    assert bool(torch.isfinite(out.centres).all()) and bool(((out.labels >= 0) & (out.labels < 4)).all())
    # sklearn (float64) reaches the 3-point optimum (0) and stops; in float32 the squared distances of
    # duplicates are rounding noise, so the relocation keeps refilling the emptied cluster (the torch
    # backend does the same in float32): the objective is bounded, not equal
    total = float(((x - x.mean(1, keepdim=True)) ** 2).sum())
    assert float(out.inertia[0]) <= float(ref.inertia[0]) + 1e-4 * total
    assert len(out.labels[0].unique()) == 3 and adjusted_rand_score(out.labels[0].numpy(), ref.labels[0].numpy()) == 1.0


def test_faiss_is_the_shared_lloyd_with_faiss_as_the_assignment_step(faiss_backend, reference):
    """The same k-means++ starts, update and stopping rule as the torch backend: in float32 from the
    same seed, the same partitions, iterations and best restart."""
    z = reference["z"].float()
    mine = faiss_backend.kmeans(z, K, n_init=3, max_iter=300, tol=1e-4, seed=4, keep_restarts=4)
    torch_way = resolve_backend("torch", "cpu")[0].kmeans(z, K, n_init=3, max_iter=300, tol=1e-4, seed=4, keep_restarts=4)
    assert torch.equal(mine.labels, torch_way.labels) and torch.equal(mine.n_iter, torch_way.n_iter)
    assert torch.equal(mine.restart_labels, torch_way.restart_labels)
    torch.testing.assert_close(mine.inertia, torch_way.inertia, rtol=1e-5, atol=0)


def test_cuml_assignment_step_with_a_cpu_stand_in_for_cuml(monkeypatch, reference):
    """The cuML adapter's assignment (DLPack in and out, (N, k) squared distances -> nearest centre),
    run on the CPU with a stand-in for cuml.metrics.pairwise_distances: the torch backend's result."""
    from kernels.backends.cuml_backend import CumlAssignment
    from kernels.kmeans import kmeans

    calls = []

    def pairwise_distances(x, y, metric):
        calls.append(metric)
        return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)

    metrics = types.ModuleType("cuml.metrics")
    metrics.pairwise_distances = pairwise_distances
    monkeypatch.setitem(sys.modules, "cuml", types.ModuleType("cuml"))
    monkeypatch.setitem(sys.modules, "cuml.metrics", metrics)
    z, init = reference["z"], reference["init"]
    mine = kmeans(z, K, init=init, tol=0.0, assign=CumlAssignment(lambda t: t.detach().contiguous()))
    ref = kmeans(z, K, init=init, tol=0.0)
    assert set(calls) == {"sqeuclidean"} and len(calls) >= z.shape[0]
    assert torch.equal(mine.labels, ref.labels) and torch.equal(mine.n_iter, ref.n_iter)
    torch.testing.assert_close(mine.centres, ref.centres, rtol=0, atol=1e-10)


def test_faiss_results_do_not_depend_on_batch_position(faiss_backend, reference):
    z = reference["z"]
    together = faiss_backend.kmeans(z, K, n_init=2, max_iter=300, tol=1e-4, seed=5)
    alone = faiss_backend.kmeans(z[2:3], K, n_init=2, max_iter=300, tol=1e-4, seed=5)
    assert torch.equal(together.labels[2], alone.labels[0])


def test_faiss_rejects_nan_like_the_torch_kernels(faiss_backend, problems):
    bad = problems.clone()
    bad[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        faiss_backend.pca_fit(bad, D)
    with pytest.raises(ValueError, match="NaN"):
        faiss_backend.kmeans(bad[:, :, :D], K, n_init=1, max_iter=10, tol=0.0, seed=0)


def test_faiss_tolerance_stops_earlier_than_a_fixed_point(faiss_backend, reference):
    z = reference["z"]
    init = z[:, :K].clone()  # neighbouring tokens: a poor start that needs many steps
    loose = faiss_backend.kmeans(z, K, n_init=1, max_iter=300, tol=1e-1, seed=0, init=init)
    strict = faiss_backend.kmeans(z, K, n_init=1, max_iter=300, tol=0.0, seed=0, init=init)
    assert bool((loose.n_iter <= strict.n_iter).all()) and bool((loose.n_iter < strict.n_iter).any())
    capped = faiss_backend.kmeans(z, K, n_init=1, max_iter=2, tol=0.0, seed=0, init=init)
    assert bool((capped.n_iter <= 2).all())


# -- GPU adapters -----------------------------------------------------------------------------

def gpu_backend(name, **kw):
    ok, why = backend_status(name, "cuda", **kw)
    if not ok:
        pytest.skip(why)
    return resolve_backend(name, "cuda", **kw)[0]


@pytest.mark.gpu
@pytest.mark.parametrize("name,kw", [("torch", {"eigh": "cupy"}), ("torch", {"eigh": "host"}), ("torch", {"eigh": "torch"}),
                                     ("faiss", {}), ("cuml", {})])
def test_gpu_backend_matches_sklearn(name, kw, problems, reference):
    backend = gpu_backend(name, **kw)
    x = problems.float().cuda()
    fit = backend.pca_fit(x, D)
    assert fit.components.device.type == "cuda"
    assert float((fit.explained_variance_ratio.cpu().double() - reference["fit"].explained_variance_ratio).abs().max()) <= 1e-5
    assert float(subspace_agreement(fit.components.cpu().double(), reference["fit"].components).min()) >= 0.999
    z, init = reference["z"].float().cuda(), reference["init"].float().cuda()
    mine = backend.kmeans(z, K, n_init=1, max_iter=300, tol=0.0, seed=0, init=init)
    ref = SklearnBackend().kmeans(reference["z"], K, n_init=1, max_iter=300, tol=0.0, seed=0, init=reference["init"])
    assert mine.labels.device.type == "cuda"
    for a, b in zip(mine.labels.cpu().numpy(), ref.labels.numpy(), strict=True):
        assert adjusted_rand_score(a, b) >= 0.999
    own = backend.kmeans(z, K, n_init=3, max_iter=300, tol=1e-4, seed=1)
    own_ref = SklearnBackend().kmeans(reference["z"], K, n_init=3, max_iter=300, tol=1e-4, seed=1)
    assert float(np.median((own.inertia.cpu().double() / own_ref.inertia).numpy())) <= 1.01


@pytest.mark.gpu
def test_faiss_gpu_index_equals_the_cpu_index(reference):
    gpu = gpu_backend("faiss")
    cpu = resolve_backend("faiss", "cpu")[0]
    z, init = reference["z"].float(), reference["init"].float()
    on_gpu = gpu.kmeans(z.cuda(), K, n_init=1, max_iter=300, tol=0.0, seed=0, init=init.cuda())
    on_cpu = cpu.kmeans(z, K, n_init=1, max_iter=300, tol=0.0, seed=0, init=init)
    assert torch.equal(on_gpu.labels.cpu(), on_cpu.labels)
    torch.testing.assert_close(on_gpu.centres.cpu(), on_cpu.centres, rtol=0, atol=1e-4)
