"""Batched KMeans against scikit-learn, its invariances, and its edge cases."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from kernels.kmeans import kmeans


def mixtures(n_problems, n=400, d=6, k=5, seed=0, dtype=np.float32):
    """Gaussian mixtures with unequal spreads, weights and some overlap, plus outliers."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_problems):
        centres = rng.normal(size=(k, d)) * rng.uniform(2.0, 4.0)
        weights = rng.dirichlet(np.full(k, 2.0))
        lab = rng.choice(k, size=n, p=weights)
        spread = rng.uniform(0.5, 1.5, size=k)[lab, None]
        x = centres[lab] + spread * rng.normal(size=(n, d))
        x[: n // 50] += rng.normal(size=(n // 50, d)) * 8  # a few outliers
        out.append(x)
    return torch.as_tensor(np.stack(out).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_initial_centres_give_sklearn_labels_and_inertia(dtype):
    x = mixtures(12, dtype=dtype, seed=1)
    init = x[:, 10:15].clone()
    mine = kmeans(x, 5, init=init)
    for i in range(x.shape[0]):
        ref = KMeans(5, init=init[i].numpy(), n_init=1, algorithm="lloyd").fit(x[i].numpy())
        assert adjusted_rand_score(ref.labels_, mine.labels[i].numpy()) == 1.0
        assert abs(float(mine.inertia[i]) / ref.inertia_ - 1) < 1e-5
        assert int(mine.n_iter[i]) == ref.n_iter_
        np.testing.assert_allclose(mine.centres[i].numpy(), ref.cluster_centers_, rtol=1e-4, atol=1e-4)


def test_own_kmeanspp_matches_sklearn_inertia_over_many_problems():
    x = mixtures(60, seed=2)
    mine = kmeans(x, 5, n_init=10, seed=0)
    ref = np.array([KMeans(5, n_init=10, random_state=0).fit(xi).inertia_ for xi in x.numpy()])
    ratio = mine.inertia.double().numpy() / ref
    assert np.median(ratio) <= 1.01, f"median inertia ratio {np.median(ratio)}"
    assert ratio.max() < 1.25, f"worst inertia ratio {ratio.max()}"


def test_inertia_is_the_weighted_distance_to_the_returned_centres():
    x = mixtures(4, seed=3, dtype=np.float64)
    res = kmeans(x, 5, n_init=3)
    recomputed = ((x - torch.gather(res.centres, 1, res.labels[..., None].expand(-1, -1, x.shape[2]))) ** 2).sum((1, 2))
    torch.testing.assert_close(res.inertia, recomputed)
    # every token carries the label of its nearest centre
    nearest = torch.cdist(x, res.centres).argmin(-1)
    assert torch.equal(nearest, res.labels)


def test_result_does_not_depend_on_batch_position_or_size():
    x = mixtures(6, seed=4)
    together = kmeans(x, 5, n_init=4, seed=7)
    for i in [0, 3, 5]:
        alone = kmeans(x[i : i + 1], 5, n_init=4, seed=7)
        assert torch.equal(alone.labels[0], together.labels[i])
        assert torch.equal(alone.centres[0], together.centres[i])
    # equal data in different slots gives equal labels (the scope-vs-encoder property)
    twin = kmeans(torch.stack([x[2], x[0], x[2]]), 5, n_init=4, seed=7)
    assert torch.equal(twin.labels[0], twin.labels[2])


def test_sample_weights_match_sklearn_and_zero_weight_is_a_subset():
    x = mixtures(3, seed=5, dtype=np.float64)
    rng = np.random.default_rng(0)
    w = torch.as_tensor(rng.integers(1, 4, size=x.shape[:2]).astype(np.float64))
    init = x[:, :5].clone()
    mine = kmeans(x, 5, init=init, weights=w)
    for i in range(3):
        ref = KMeans(5, init=init[i].numpy(), n_init=1).fit(x[i].numpy(), sample_weight=w[i].numpy())
        assert adjusted_rand_score(ref.labels_, mine.labels[i].numpy()) == 1.0
        assert abs(float(mine.inertia[i]) / ref.inertia_ - 1) < 1e-9
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[:, :250] = True
    masked = kmeans(x, 5, init=init, weights=mask)
    subset = kmeans(x[:, :250].contiguous(), 5, init=init)
    torch.testing.assert_close(masked.centres, subset.centres)
    torch.testing.assert_close(masked.inertia, subset.inertia)


def test_duplicated_points_and_fewer_distinct_points_than_k():
    base = torch.tensor([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]], dtype=torch.float64)
    x = base.repeat(40, 1)[None]  # 120 tokens, 3 distinct points
    res = kmeans(x, 5, n_init=3)
    assert bool(torch.isfinite(res.centres).all())
    assert float(res.inertia[0]) < 1e-20  # zero up to the rounding of centring
    assert int(res.labels.min()) >= 0 and int(res.labels.max()) < 5
    # tokens at the same point share a label
    lab = res.labels[0].reshape(40, 3)
    assert bool((lab == lab[0]).all())


def test_empty_cluster_is_moved_to_the_farthest_point_as_sklearn_does():
    rng = np.random.default_rng(6)
    x = torch.as_tensor(rng.normal(size=(1, 300, 3)))
    init = torch.cat([x[0, :4], torch.full((1, 3), 100.0, dtype=torch.float64)])[None]  # one centre far away
    mine = kmeans(x, 5, init=init)
    ref = KMeans(5, init=init[0].numpy(), n_init=1).fit(x[0].numpy())
    assert adjusted_rand_score(ref.labels_, mine.labels[0].numpy()) == 1.0
    assert len(torch.unique(mine.labels)) == 5


def test_empty_token_subset_gives_defined_empty_result():
    x = mixtures(2, seed=7)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[1] = False
    res = kmeans(x, 5, n_init=2, weights=mask)
    assert bool((res.labels[1] == -1).all()) and float(res.inertia[1]) == 0.0 and int(res.n_iter[1]) == 0
    assert bool((res.labels[0] >= 0).all())
    assert bool(torch.isfinite(res.centres).all())


def test_constant_data_is_one_point():
    res = kmeans(torch.full((1, 50, 4), 3.0), 3, n_init=2)
    assert float(res.inertia[0]) == 0.0 and bool(torch.isfinite(res.centres).all())


def test_bad_arguments_are_clear_errors():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="more than the 4 tokens"):
        kmeans(x, 5)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, 0)
    x[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf.*\[1\]"):
        kmeans(x, 2)


def test_seed_ensemble_keeps_the_best_of_n_init_and_holds_single_start_runs():
    """keep_restarts = S: labels bitwise as without it; member r is the single-start run from restart r's
    k-means++ start; with S >= n_init the kept partition is one of the members."""
    from kernels.kmeans import kmeans_plusplus

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 400, 6, generator=gen)
    x[:, :150] += 3.0
    x[2, ::4] -= 4.0
    plain = kmeans(x, 5, n_init=3, seed=11)
    ens = kmeans(x, 5, n_init=3, seed=11, keep_restarts=6)
    for name in ("labels", "centres", "inertia", "n_iter"):
        assert torch.equal(getattr(plain, name), getattr(ens, name)), name
    assert ens.restart_labels.shape == (4, 6, 400)
    xc = x - x.mean(1, keepdim=True)
    starts = kmeans_plusplus(xc, torch.ones(4, 400), 5, 3, 11, restart_range=(0, 6)) + x.mean(1)[:, None, None, :]
    for r in range(6):
        single = kmeans(x, 5, n_init=1, seed=0, init=starts[:, r])
        assert torch.equal(single.labels, ens.restart_labels[:, r]), r
    assert all(any(torch.equal(ens.labels[p], ens.restart_labels[p, r]) for r in range(3)) for p in range(4))


def test_per_iteration_statistics_on_request():
    """stats=True changes no result; the objective of every restart never rises from one Lloyd step to
    the next, the running count only falls, and with keep_restarts the statistics cover every restart."""
    x = mixtures(5, seed=8, dtype=np.float64)
    w = torch.as_tensor(np.random.default_rng(1).uniform(0.5, 2.0, size=x.shape[:2]))
    plain = kmeans(x, 5, n_init=3, seed=2, weights=w)
    res = kmeans(x, 5, n_init=3, seed=2, weights=w, stats=True, keep_restarts=5)
    for name in ("labels", "centres", "inertia", "n_iter"):
        assert torch.equal(getattr(plain, name), getattr(res, name)), name
    obj, running = res.stats.objective, res.stats.running
    assert obj.shape[1:] == (5, 5) and res.stats.shift.shape == obj.shape and running.shape == obj.shape[:1]
    ran = ~obj.isnan()
    assert bool(ran[0].all()), "every restart runs its first step"
    later, earlier = obj[1:], obj[:-1]
    both = ran[1:] & ran[:-1]
    assert bool((later[both] <= earlier[both] * (1 + 1e-12)).all())
    assert bool((running[1:] <= running[:-1]).all()) and int(running[-1]) == 0
    # a restart's iteration count is the number of steps it ran (the first n_init restarts: n_iter of the best)
    steps_run = ran.sum(0)  # (P, R)
    best = [next(r for r in range(3) if torch.equal(res.labels[p], res.restart_labels[p, r])) for p in range(5)]
    assert [int(steps_run[p, best[p]]) for p in range(5)] == res.n_iter.tolist()
