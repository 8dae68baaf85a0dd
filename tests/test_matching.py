"""Batched Hungarian matching against scipy's linear_sum_assignment."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from kernels.matching import linear_sum_assignment


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (7, 3), (1, 1), (9, 9)])
@pytest.mark.parametrize("kind", ["float", "ties"])
@pytest.mark.parametrize("maximize", [True, False])
def test_optimum_equals_scipy(shape, kind, maximize):
    rng = np.random.default_rng(hash((shape, kind, maximize)) % 2**32)
    n, m = shape
    cost = rng.normal(size=(40, n, m)) if kind == "float" else rng.integers(0, 3, size=(40, n, m)).astype(float)
    got = linear_sum_assignment(torch.as_tensor(cost), maximize=maximize).numpy()
    for i in range(40):
        rows, cols = scipy_lsa(cost[i], maximize=maximize)
        matched = np.where(got[i] >= 0)[0]
        assert len(matched) == min(n, m)
        assert len(set(got[i][matched])) == len(matched), "a column used twice"
        assert abs(cost[i][matched, got[i][matched]].sum() - cost[i][rows, cols].sum()) < 1e-9


def test_identity_and_permutation_recovered():
    perm = torch.tensor([[2, 0, 1, 4, 3]])
    table = torch.zeros(1, 5, 5)
    table[0, torch.arange(5), perm[0]] = 100.0
    assert torch.equal(linear_sum_assignment(table, maximize=True), perm)
