"""The flip-ratio controls and the encoder KMeans start, against a one-problem-at-a-time reference.

The reference takes one image and one scope at a time: DATR tokens F + alpha * A (A from the
scope's kept queries only), PCA + KMeans on that single problem, Hungarian alignment with
scipy and the flip share in numpy. It knows nothing of the batch's problem layout.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from engine.analysis import controls
from engine.analysis.batch import analyze_batch
from engine.core.config import AnalysisConfig, DataConfig
from engine.core.errors import ConfigError
from engine.data.index import index_dataset
from engine.data.loader import make_loader
from engine.sources.simulated import SimulatedSource
from kernels.backends.torch_backend import TorchBackend
from kernels.datr import attend_queries
from kernels.pca import pca_transform

SCENES = {"count": 2, "size": (400, 300), "seed": 9}  # the `scenes` fixture (tests/conftest.py)

PROMPTS = ("vegetation", "building", "road", "vehicle", "other")
CLASS_IDS = (0, 1, 2, 3, 4)
CFG = AnalysisConfig(n_init=2, dims=(8,), alphas=(0.3,), seeds=3)
CONTROLS = ("flip_ratio_null", "flip_ratio_null_processed", "flip_ratio_reseed")


def simulated_batch(root, count):
    cfg = DataConfig(root=root, num_workers=0, limit=count)
    loaded = next(iter(make_loader(index_dataset(cfg), cfg, count, "cpu")))
    return SimulatedSource(PROMPTS, CLASS_IDS).run_batch(loaded.images, loaded.image_ids, (0.5,), gt_mask=loaded.gt_mask,
                                                          gt_tokens=loaded.gt_tokens)


@pytest.fixture(scope="module")
def batch(scenes):
    return simulated_batch(scenes, 2)


def analyze(src, cfg=CFG, backend=None):
    return analyze_batch(src, cfg, backend or TorchBackend(), PROMPTS, CLASS_IDS, 5).columns


def rows_of(columns):
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


@pytest.fixture(scope="module")
def rows(batch):
    return rows_of(analyze(batch))


def reference_flips(src, cfg, image: int, scope_index: int) -> dict[str, float]:
    """flip_ratio, flip_ratio_null and flip_ratio_reseed of one (image, scope) from single problems."""
    tau, alpha, d, k = cfg.taus[0], cfg.alphas[0], cfg.dims[0], cfg.ks[0]
    feats = src.features[image].float()
    tokens = feats.flatten(1).T.contiguous()  # (N, C)
    n = tokens.shape[0]
    kept = src.scores[image] >= tau  # (P, Q)
    masks = src.query_masks[image].float().reshape(*kept.shape, n)
    chosen = kept.clone() if scope_index == 0 else torch.zeros_like(kept)
    if scope_index > 0:
        chosen[scope_index - 1] = kept[scope_index - 1]
    keys = src.queries[image].float()[chosen]  # (K, C)
    attended = attend_queries(tokens[None], keys[None, None], torch.ones(1, 1, len(keys), dtype=torch.bool))[0, 0]
    weights = torch.where(chosen[..., None], masks, torch.zeros_like(masks)).amax((0, 1))
    effective = (weights >= cfg.effective_threshold).numpy()
    backend = TorchBackend()

    def cluster(x, seed):
        z = pca_transform(x[None], backend.pca_fit(x[None], d))
        return backend.kmeans(z, k, n_init=cfg.n_init, max_iter=cfg.max_iter, tol=cfg.tol, seed=seed).labels[0].numpy()

    encoder = cluster(tokens, cfg.seed)

    def flip(labels):
        table = np.zeros((k, k))
        np.add.at(table, (labels, encoder), 1)
        rows, cols = linear_sum_assignment(-table)
        mapping = np.empty(k, dtype=int)
        mapping[rows] = cols
        return float((mapping[labels] != encoder)[effective].mean())

    scope = "global" if scope_index == 0 else PROMPTS[scope_index - 1]
    perm = controls.null_permutations(cfg.seed, [src.image_ids[image]], [scope], tau, n)[0, 0]
    return {"flip_ratio": flip(cluster(tokens + alpha * attended, cfg.seed)),
            "flip_ratio_null": flip(cluster(tokens + alpha * attended[perm], cfg.seed)),
            "flip_ratio_reseed": flip(cluster(tokens, cfg.seed + 1))}


def test_controls_match_the_one_problem_reference(batch, rows):
    checked = 0
    for image in range(len(batch.image_ids)):
        for scope_index, scope in enumerate(("global", *PROMPTS)):
            row = next(r for r in rows if r["image_id"] == batch.image_ids[image] and r["scope"] == scope)
            if not row["effective_tokens"]:
                assert all(row[name] is None for name in CONTROLS)
                continue
            want = reference_flips(batch, CFG, image, scope_index)
            for name, value in want.items():
                assert row[name] == pytest.approx(value, abs=1e-12), (image, scope, name)
            checked += 1
    assert checked >= 6
    assert any(r["flip_ratio_null"] for r in rows) and any(r["flip_ratio_reseed"] for r in rows)  # not all zero


def test_identity_permutation_makes_the_null_equal_the_flip_ratio(batch, monkeypatch):
    def identity(seed, image_ids, scopes, tau, n, device="cpu"):
        return torch.arange(n, device=device).expand(len(image_ids), len(scopes), n).clone()

    monkeypatch.setattr(controls, "null_permutations", identity)
    for init in ("independent", "encoder"):
        got = rows_of(analyze(batch, AnalysisConfig(n_init=2, dims=(8,), kmeans_init=init, seeds=3)))
        assert any(r["flip_ratio"] for r in got)
        for r in got:
            assert r["flip_ratio_null"] == r["flip_ratio"] and r["flip_ratio_null_processed"] == r["flip_ratio_processed"]
            assert r["flip_null_between"] == r["flip_between"] and (r["effect_null"] is None or r["effect_null"] == 0)


def test_tokens_equal_to_the_encoder_tokens_flip_nothing(batch):
    got = rows_of(analyze(batch, AnalysisConfig(n_init=2, dims=(8,), alphas=(0.0,), seeds=3)))
    datr = [r for r in got if r["scope_kind"] != "encoder" and r["effective_tokens"]]
    assert datr and all(r[c] == 0 for r in datr for c in ("flip_ratio", "flip_ratio_null", "flip_ratio_null_processed"))


def test_controls_off_leaves_every_other_column_as_it_was(batch, rows):
    off = rows_of(analyze(batch, replace(CFG, controls=False)))
    assert len(off) == len(rows)
    nulls = (*CONTROLS, "flip_null_between", "effect_null", "effect_null_se")
    for a, b in zip(rows, off, strict=True):
        assert all(b[c] is None for c in nulls)
        assert {c: v for c, v in a.items() if c not in nulls} == {c: v for c, v in b.items() if c not in nulls}
    assert all((r["flip_ratio"] is None) == (r["flip_ratio_null"] is None) == (r["flip_ratio_reseed"] is None) for r in rows)


def test_null_permutation_depends_on_seed_image_scope_and_tau_only():
    n = 300
    base = controls.null_permutations(0, ["a", "b"], ["global", "road"], 0.5, n)
    assert all(torch.equal(row.sort().values, torch.arange(n)) for row in base.reshape(-1, n))
    assert torch.equal(controls.null_permutations(0, ["b"], ["road"], 0.5, n)[0, 0], base[1, 1])  # not the batch
    for other in (controls.null_permutations(1, ["a"], ["global"], 0.5, n), controls.null_permutations(0, ["b"], ["global"], 0.5, n),
                  controls.null_permutations(0, ["a"], ["road"], 0.5, n), controls.null_permutations(0, ["a"], ["global"], 0.4, n)):
        assert not torch.equal(other[0, 0], base[0, 0])


class RecordingBackend(TorchBackend):
    """The torch backend, keeping every KMeans call's input, seed, tolerance and starting centres."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def kmeans(self, x, k, **kw):
        result = super().kmeans(x, k, **kw)
        self.calls.append({"x": x.clone(), "seed": kw["seed"], "init": kw.get("init"), "tol": kw["tol"],
                           "labels": result.labels, "members": result.restart_labels})
        return result


def test_encoder_start_is_the_encoder_partitions_means_in_each_scopes_pca_space(batch):
    cfg = AnalysisConfig(n_init=2, dims=(8,), kmeans_init="encoder", seeds=3)
    backend = RecordingBackend()
    got = rows_of(analyze(batch, cfg, backend))
    encoder_call, datr_call, members_call = backend.calls  # no reseed: the rows have no restart instability
    assert encoder_call["init"] is None and encoder_call["seed"] == cfg.seed and encoder_call["tol"] == 0
    b, m = len(batch.image_ids), 7
    x, init, starts = (t.double().numpy() for t in (datr_call["x"], datr_call["init"], members_call["init"]))
    assert x.shape[0] == 2 * b * (m - 1) and init.shape == (x.shape[0], cfg.ks[0], cfg.dims[0])  # one run each
    assert starts.shape == (x.shape[0], cfg.seeds, cfg.ks[0], cfg.dims[0])  # and one per ensemble member
    for p in range(x.shape[0]):
        image = p // (2 * (m - 1))  # each image's DATR problems, then its null controls
        encoder_labels = encoder_call["labels"][image].numpy()
        want = np.stack([x[p][encoder_labels == c].mean(0) for c in range(cfg.ks[0])])
        np.testing.assert_allclose(init[p], want, rtol=1e-5, atol=1e-5)
        member = encoder_call["members"][image, 1].numpy()
        want = np.stack([x[p][member == c].mean(0) for c in range(cfg.ks[0])])
        np.testing.assert_allclose(starts[p, 1], want, rtol=1e-5, atol=1e-5)
    assert {r["kmeans_init"] for r in got} == {"encoder"}
    assert all(r["flip_ratio_reseed"] is None for r in got)
    datr = [r for r in got if r["scope"] != "encoder" and r["effective_tokens"]]
    assert datr and all(r["flip_within"] == 0 for r in datr)  # a paired design: no restart instability


def test_encoder_start_partitions_are_lloyd_fixed_points(batch):
    """Every encoder member under --kmeans-init encoder: its clusters' means label every token as it is."""
    from kernels.kmeans import squared_distances

    cfg = AnalysisConfig(n_init=2, dims=(8,), kmeans_init="encoder", seeds=3)
    backend = RecordingBackend()
    analyze(batch, cfg, backend)
    call = backend.calls[0]
    x = call["x"].double()
    for labels in [call["labels"], *call["members"].unbind(1)]:
        onehot = torch.nn.functional.one_hot(labels.long(), cfg.ks[0]).double()  # (B, N, k)
        centres = onehot.transpose(1, 2) @ x / onehot.sum(1)[..., None]
        assert torch.equal(squared_distances(x, centres).argmin(-1), labels.long())


def test_encoder_start_rows_do_not_depend_on_the_batch(scenes, batch):
    cfg = AnalysisConfig(n_init=2, dims=(8,), kmeans_init="encoder", seeds=3)
    together = [r for r in rows_of(analyze(batch, cfg)) if r["image_id"] == batch.image_ids[0]]
    assert together == rows_of(analyze(simulated_batch(scenes, 1), cfg))


def test_kmeans_init_is_a_choice():
    with pytest.raises(ConfigError, match="--kmeans-init"):
        AnalysisConfig(kmeans_init="sklearn").validate()
