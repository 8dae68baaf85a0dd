"""Dataset-level clustering: the reservoir is a uniform, order-free, mergeable sample; the
contingency and purity agree with a direct count; the files hold what the result says."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from engine.analysis.dataset import (
    TokenReservoir,
    cluster_dataset,
    token_priorities,
    write_dataset_clustering,
)
from kernels.backends import backend_status, resolve_backend

C = 8


def image_batch(n_images, n_tokens=100, seed=0, classes=3, spread=0.05):
    """Tokens near one of `classes` dataset-wide centres (so clusters = classes), and their GT."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, C) * 10
    gt = torch.randint(0, classes, (n_images, n_tokens), generator=gen)
    tokens = centres[gt] + spread * torch.randn(n_images, n_tokens, C, generator=gen)
    return tokens, gt, [f"img{seed}_{i}" for i in range(n_images)]


def filled(size, parts, seed=3):
    res = TokenReservoir(size, seed=seed, channels=C)
    for tokens, gt, ids in parts:
        res.add(tokens, gt, ids)
    return res


def same_content(a, b):
    return (np.array_equal(a.priorities, b.priorities) and torch.equal(a.tokens, b.tokens)
            and np.array_equal(a.labels, b.labels) and list(a.image_ids) == list(b.image_ids))


def test_reservoir_holds_the_smallest_priorities_of_all_tokens_offered():
    tokens, gt, ids = image_batch(6)
    res = filled(150, [(tokens, gt, ids)])
    assert len(res) == 150 and res.tokens_seen == 600 and res.full
    every = np.concatenate([token_priorities(3, i, 100) for i in ids])
    np.testing.assert_array_equal(res.priorities, np.sort(every)[:150])
    # each kept entry is the token (and class) it claims to be
    pos = {i: n for n, i in enumerate(ids)}
    rows = torch.tensor([pos[i] for i in res.image_ids])
    torch.testing.assert_close(res.tokens, tokens[rows, torch.as_tensor(res.token_index)])
    np.testing.assert_array_equal(res.labels, gt[rows, torch.as_tensor(res.token_index)].numpy())


def test_batch_order_batch_size_and_sharding_do_not_change_the_sample():
    tokens, gt, ids = image_batch(8)
    one = filled(200, [(tokens, gt, ids)])
    perm = [5, 2, 7, 0, 3, 6, 1, 4]
    reordered = filled(200, [(tokens[[i]], gt[[i]], [ids[i]]) for i in perm])
    assert same_content(one, reordered)
    left = filled(200, [(tokens[:3], gt[:3], ids[:3])])
    right = filled(200, [(tokens[3:], gt[3:], ids[3:])])
    assert same_content(one, left.merge(right))
    assert left.tokens_seen == one.tokens_seen


def test_re_adding_an_image_and_merging_overlaps_change_nothing():
    tokens, gt, ids = image_batch(4)
    once = filled(120, [(tokens, gt, ids)])
    twice = filled(120, [(tokens, gt, ids), (tokens[1:2], gt[1:2], ids[1:2])])
    assert same_content(once, twice)
    overlap = filled(120, [(tokens[:3], gt[:3], ids[:3])]).merge(filled(120, [(tokens[2:], gt[2:], ids[2:])]))
    assert same_content(once, overlap)


def test_saved_reservoir_continues_as_if_never_stopped(tmp_path):
    tokens, gt, ids = image_batch(6)
    whole = filled(150, [(tokens, gt, ids)])
    first = filled(150, [(tokens[:2], gt[:2], ids[:2])])
    first.save(tmp_path / "reservoir.npz")
    resumed = TokenReservoir.load(tmp_path / "reservoir.npz")
    assert same_content(first, resumed) and resumed.tokens_seen == first.tokens_seen
    resumed.add(tokens[2:], gt[2:], ids[2:])
    assert same_content(whole, resumed) and resumed.tokens_seen == whole.tokens_seen
    empty = TokenReservoir(10, channels=C)
    empty.save(tmp_path / "empty.npz")
    assert len(TokenReservoir.load(tmp_path / "empty.npz")) == 0


def test_sample_is_spread_evenly_over_images():
    tokens, gt, ids = image_batch(10, n_tokens=400)
    res = filled(1000, [(tokens, gt, ids)])
    counts = np.unique(res.image_ids.astype(str), return_counts=True)[1]
    assert len(counts) == 10 and counts.min() >= 60 and counts.max() <= 140  # expected 100 each


def test_no_gt_device_and_dtype_and_mismatches():
    tokens, _, ids = image_batch(2)
    res = filled(50, [(tokens.double(), None, ids)])
    assert res.tokens.dtype == torch.float32 and bool((res.labels == 255).all())
    with pytest.raises(ValueError, match="cannot merge"):
        res.merge(TokenReservoir(50, seed=4, channels=C))
    with pytest.raises(AssertionError, match="channels"):
        res.add(torch.zeros(1, 10, C + 1), None, ["x"])
    with pytest.raises(ValueError, match="size"):
        TokenReservoir(0)


@pytest.mark.parametrize("name", ["torch", "faiss"])
def test_cluster_dataset_recovers_dataset_wide_classes(name):
    ok, why = backend_status(name, "cpu")
    if not ok:
        pytest.skip(why)
    backend = resolve_backend(name, "cpu")[0]
    tokens, gt, ids = image_batch(6)
    res = filled(300, [(tokens, gt, ids)])
    out = cluster_dataset(res, 3, 3, backend, seed=0, n_init=2, class_names=("a", "b", "c"))
    table = np.array(out["contingency"])
    assert table.shape == (3, 3) and table.sum() == out["tokens_with_class"] == 300
    np.testing.assert_array_equal(np.sort(table.sum(1)), np.sort(out["sizes"]))
    np.testing.assert_array_equal(table.sum(0), np.bincount(res.labels, minlength=3))
    assert out["purity"] == 1.0 and out["ari"] == pytest.approx(1.0) and out["accuracy"] == 1.0
    assert sorted(out["majority_class"]) == [0, 1, 2] and out["backend"] == name
    assert out["images"] == 6 and out["tokens_seen"] == 600


def test_purity_is_the_majority_share_and_no_gt_gives_none():
    torch_backend = resolve_backend("torch", "cpu")[0]
    tokens, gt, ids = image_batch(4, spread=3.0, seed=2)  # overlapping classes: purity below 1
    gt[:, ::7] = 255  # some tokens without a class
    res = filled(200, [(tokens, gt, ids)])
    out = cluster_dataset(res, 4, 4, torch_backend, seed=1, n_init=2, num_classes=3)
    table = np.array(out["contingency"])
    assert out["purity"] == pytest.approx(table.max(1).sum() / table.sum())
    assert table.sum() == int(((res.labels != 255)).sum())
    blind = filled(200, [(tokens, None, ids)])
    out = cluster_dataset(blind, 4, 4, torch_backend, seed=1, n_init=2)
    assert out["contingency"] is None and out["purity"] is None and sum(out["sizes"]) == 200
    with pytest.raises(ValueError, match="fewer than k"):
        cluster_dataset(filled(2, [(tokens[:1], None, ids[:1])]), 3, 2, torch_backend)


def test_written_files_hold_the_results(tmp_path):
    backend = resolve_backend("torch", "cpu")[0]
    tokens, gt, ids = image_batch(3)
    res = filled(150, [(tokens, gt, ids)])
    results = [cluster_dataset(res, k, 2, backend, n_init=1, class_names=("a", "b", "c")) for k in (2, 3)]
    paths = write_dataset_clustering(tmp_path, results)
    assert [p.name for p in paths] == ["dataset_clustering.json", "dataset_clustering.parquet"]
    payload = json.loads((tmp_path / "dataset_clustering.json").read_text())
    assert payload["results"] == results
    table = pq.read_table(tmp_path / "dataset_clustering.parquet").to_pylist()
    for res_k in results:
        cells = [r for r in table if r["k"] == res_k["k"]]
        assert len(cells) == res_k["k"] * 3 and sum(r["count"] for r in cells) == 150
        assert {r["class_name"] for r in cells} == {"a", "b", "c"}
