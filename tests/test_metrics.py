"""Metric kernels against scikit-learn and plain loop references."""

import itertools

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from kernels import metrics as km
from kernels.grid import majority_downsample, pool_to_tokens


@pytest.fixture(scope="module")
def labelings():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(16, 500))
    b = np.where(rng.random((16, 500)) < 0.6, a, rng.integers(0, 4, size=(16, 500)))
    b[0] = 0  # a single cluster
    a[1] = 3
    b[1] = 3  # both trivial
    b[2] = (a[2] + 1) % 5  # a relabelling
    return a, b


def test_nmi_and_ari_match_sklearn(labelings):
    a, b = labelings
    table = km.contingency(torch.as_tensor(a), torch.as_tensor(b), 5, 5)
    nmi = km.nmi_from_contingency(table).numpy()
    ari = km.ari_from_contingency(table).numpy()
    for i in range(a.shape[0]):
        assert abs(nmi[i] - skm.normalized_mutual_info_score(a[i], b[i])) < 1e-12
        assert abs(ari[i] - skm.adjusted_rand_score(a[i], b[i])) < 1e-12


def test_matched_accuracy_equals_best_permutation(labelings):
    a, b = labelings
    table = km.contingency(torch.as_tensor(a), torch.as_tensor(b), 5, 5)
    acc = km.matched_accuracy(table).numpy()
    for i in range(a.shape[0]):
        best = max(np.mean(np.array(perm)[a[i]] == b[i]) for perm in itertools.permutations(range(5)))
        assert abs(acc[i] - best) < 1e-12


def test_matched_accuracy_with_more_clusters_than_classes_counts_unmatched_as_wrong():
    clusters = torch.tensor([[0, 0, 1, 1, 2, 2]])
    classes = torch.tensor([[0, 0, 1, 1, 1, 1]])
    table = km.contingency(clusters, classes, 3, 2)
    assert float(km.matched_accuracy(table)[0]) == pytest.approx(4 / 6)


def test_align_and_flip_ratio():
    ref = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 2]])
    labels = torch.tensor([[2, 2, 0, 0, 1, 1, 1, 0]])  # a relabelling with one real change
    aligned = km.align_to_reference(labels, ref, 3)
    assert aligned.tolist() == [[0, 0, 1, 1, 2, 2, 2, 1]]
    eff = torch.tensor([[True, True, False, False, True, True, True, True]])
    assert float(km.flip_ratio(aligned, ref, eff)[0]) == pytest.approx(1 / 6)
    assert bool(torch.isnan(km.flip_ratio(aligned, ref, torch.zeros_like(eff)))[0])


def loop_majority_filter(label_map, k):
    h, w = label_map.shape
    out = label_map.copy()
    for y in range(h):
        for x in range(w):
            votes = np.zeros(k, int)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        votes[label_map[yy, xx]] += 1
            top = votes.max()
            if (votes == top).sum() == 1:
                out[y, x] = votes.argmax()
    return out


def test_majority_filter_matches_loop_reference():
    rng = np.random.default_rng(1)
    maps = rng.integers(0, 4, size=(3, 12, 10))
    got = km.majority_filter(torch.as_tensor(maps), 4).numpy()
    for i in range(3):
        np.testing.assert_array_equal(got[i], loop_majority_filter(maps[i], 4))


def test_mask_iou_with_ignore_and_empty():
    gt = torch.tensor([[[0, 0, 1], [1, 255, 1], [2, 2, 2]]])
    pred = torch.zeros(1, 4, 3, 3, dtype=torch.bool)
    pred[0, 0, 0, :] = True  # class 0: 2 hits + 1 false positive
    pred[0, 1, 1, 1] = True  # class 1: only an ignored cell
    iou = km.mask_iou(pred, gt, torch.tensor([0, 1, 2, 3])).numpy()[0]
    assert iou[0] == pytest.approx(2 / 3)
    assert iou[1] == 0.0  # 3 GT cells, no valid hit
    assert iou[2] == 0.0
    assert np.isnan(iou[3])  # class absent and nothing predicted


def test_unsupervised_scores_match_sklearn():
    rng = np.random.default_rng(2)
    lab = rng.integers(0, 4, size=(5, 300))
    x = rng.normal(size=(5, 300, 3)) + lab[..., None] * 1.5
    xt, lt = torch.as_tensor(x), torch.as_tensor(lab)
    ch = km.calinski_harabasz(xt, lt, 4).numpy()
    db = km.davies_bouldin(xt, lt, 4).numpy()
    sil = km.silhouette_sampled(xt, lt, 4, sample=300).numpy()
    for i in range(5):
        assert ch[i] == pytest.approx(skm.calinski_harabasz_score(x[i], lab[i]), rel=1e-10)
        assert db[i] == pytest.approx(skm.davies_bouldin_score(x[i], lab[i]), rel=1e-10)
        assert sil[i] == pytest.approx(skm.silhouette_score(x[i], lab[i]), rel=1e-8)  # cdist via matmul
    one = km.calinski_harabasz(xt[:1], torch.zeros(1, 300, dtype=torch.long), 4)
    assert bool(torch.isnan(one).all())


def loop_majority_downsample(lab, grid, k):
    h, w = lab.shape
    votes = np.zeros((grid, grid, k), int)
    for y in range(h):
        for x in range(w):
            v = lab[y, x]
            if v == 255:
                continue
            votes[int((y + 0.5) * grid / h), int((x + 0.5) * grid / w), v] += 1
    out = votes.argmax(-1).astype(np.uint8)
    out[votes.sum(-1) == 0] = 255
    return out


def test_majority_downsample_matches_loop_reference():
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 5, size=(2, 37, 53)).astype(np.uint8)
    lab[0, :20, :30] = 255  # an ignored region leaves whole cells empty
    lab[1, ::2] = 2  # ties are frequent
    got = majority_downsample(torch.as_tensor(lab), 9, 5).numpy()
    for i in range(2):
        np.testing.assert_array_equal(got[i], loop_majority_downsample(lab[i], 9, 5))
    assert (got[0] == 255).any()


def test_pool_to_tokens_averages_blocks():
    probs = torch.rand(2, 3, 8, 8)
    pooled = pool_to_tokens(probs, grid=2)
    torch.testing.assert_close(pooled[1, 2, 0, 1], probs[1, 2, :4, 4:].mean())
