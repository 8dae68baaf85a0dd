"""Lloyd and the batched Hungarian read the host only every few steps; results are bit for bit
those of the versions that read it at every step (tests/sync_reference.py)."""

import pytest
import torch

import kernels.kmeans as km
import kernels.matching as matching
from bench.dispatch import OpCounter
from tests.sync_reference import hungarian_square_reference, lloyd_reference


def problems(seed: int) -> torch.Tensor:
    """Problems that converge at different steps, one with duplicated points (empty clusters)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 300, 8, generator=gen)
    x[1] *= torch.linspace(0.1, 3, 300)[:, None]  # stretched: many Lloyd steps
    x[2, :280] = x[2, 0]  # 280 copies of one point: k-means++ and Lloyd meet empty clusters
    x[3, ::3] += 5.0
    return x


@pytest.mark.parametrize("weighted", [False, True])
def test_lloyd_matches_the_step_by_step_reference(monkeypatch, weighted):
    x = problems(0)
    weights = None
    if weighted:
        weights = torch.rand(6, 300, generator=torch.Generator().manual_seed(1))
        weights[4, 100:] = 0
        weights[5] = 0  # a problem with no weighted token
    mine = km.kmeans(x, 7, n_init=10, seed=3, weights=weights)
    with OpCounter() as fewer:
        km.kmeans(x, 7, n_init=10, seed=3, weights=weights)
    monkeypatch.setattr(km, "lloyd", lloyd_reference)
    ref = km.kmeans(x, 7, n_init=10, seed=3, weights=weights)
    with OpCounter() as every_step:
        km.kmeans(x, 7, n_init=10, seed=3, weights=weights)
    assert int(ref.n_iter.max()) > 8, "the data should need several sync windows"
    for name in ("labels", "centres", "inertia", "n_iter"):
        assert torch.equal(getattr(mine, name), getattr(ref, name)), name
    assert fewer.syncs < every_step.syncs / 3, (fewer.syncs, every_step.syncs)


@pytest.mark.parametrize("sync_every", [1, 2, 7])
def test_any_sync_interval_gives_the_same_clustering(sync_every):
    x = problems(2)
    base = km.kmeans(x, 5, n_init=4, seed=0)
    with OpCounter() as count:
        other = km.kmeans(x, 5, n_init=4, seed=0, sync_every=sync_every, stats=True)
    for name in ("labels", "centres", "inertia", "n_iter"):
        assert torch.equal(getattr(base, name), getattr(other, name)), name
    # Lloyd reads nonzero and max once per window of sync_every steps and nonzero once more to find
    # nothing running (the other scalar read is the finite check of the input)
    steps = int((~other.stats.objective.isnan()).flatten(1).any(1).sum())  # steps in which a restart ran
    windows = -(-steps // sync_every) + 1
    assert count.sync_by_op == {"aten.nonzero": windows, "aten._local_scalar_dense": windows}, (steps, windows)


@pytest.mark.parametrize("k", [1, 2, 5, 7, 9, 13, 24])
def test_hungarian_matches_the_step_by_step_reference(k):
    gen = torch.Generator().manual_seed(k)
    cost = torch.cat([torch.rand(40, k, k, generator=gen, dtype=torch.float64),
                      torch.randint(0, 3, (40, k, k), generator=gen).double()])  # integer costs: many ties
    mine = matching._hungarian_square(cost)
    ref = hungarian_square_reference(cost)
    assert torch.equal(mine, ref)
    with OpCounter() as fewer:
        matching._hungarian_square(cost)
    with OpCounter() as every_step:
        hungarian_square_reference(cost)
    # row i searches and augments within i steps: up to k = 7 the bounds leave no read worth making
    assert fewer.syncs == 0 if k <= 7 else 0 < fewer.syncs < every_step.syncs / 2, (fewer.syncs, every_step.syncs)
