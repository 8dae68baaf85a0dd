"""The seed ensemble's per-row measures against a one-pair-at-a-time reference (scipy's Hungarian,
numpy's jackknife), and against single problems clustered outside the batch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from engine.analysis import controls
from engine.analysis.batch import analyze_batch
from engine.analysis.ensemble import ensemble_measures
from engine.core.config import AnalysisConfig
from kernels.backends.torch_backend import TorchBackend
from kernels.datr import attend_queries
from kernels.pca import pca_transform

PROMPTS = ("vegetation", "building", "road", "vehicle", "other")
CLASS_IDS = (0, 1, 2, 3, 4)


def flip(reference: np.ndarray, labels: np.ndarray, effective: np.ndarray, k: int) -> float:
    """Share of effective tokens whose label, matched one-to-one to the reference over all tokens, differs."""
    table = np.zeros((k, k))
    np.add.at(table, (labels, reference), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.empty(k, dtype=int)
    mapping[rows] = cols
    return float((mapping[labels] != reference)[effective].mean())


def reference_measures(enc, members, effective, k, pairs):
    """Mean flip over the pairs and the jackknife SE of per-pair values (leave-one-seed-out) of one unit."""
    values = {pair: flip(enc[pair[0]], members[pair[1]], effective, k) for pair in pairs}
    return values


def jackknife(values: dict, seeds: int) -> float:
    loo = [np.mean([v for (s, t), v in values.items() if i not in (s, t)]) for i in range(seeds)]
    return float(np.sqrt((seeds - 1) / seeds * np.sum((np.array(loo) - np.mean(loo)) ** 2)))


@pytest.mark.parametrize("paired", [False, True])
def test_ensemble_measures_match_the_pairwise_reference(paired):
    gen = torch.Generator().manual_seed(3)
    b, j, s, n, k = 2, 3, 4, 200, 4
    encoder = torch.randint(0, k, (b, s, n), generator=gen)
    real = torch.where(torch.rand(b, j, s, n, generator=gen) < 0.8, encoder[:, None], torch.randint(0, k, (b, j, s, n), generator=gen))
    null = torch.randint(0, k, (b, j, s, n), generator=gen)
    effective = torch.rand(b, j, n, generator=gen) < 0.5
    effective[1, 2] = False  # an empty effective set: every measure is NaN
    got = ensemble_measures(encoder.to(torch.int8), real.to(torch.int8), null.to(torch.int8), effective, k, paired)
    pairs = [(t, t) for t in range(s)] if paired else [p for p in itertools.product(range(s), repeat=2) if p[0] != p[1]]
    for bi, ji in itertools.product(range(b), range(j)):
        eff = effective[bi, ji].numpy()
        if not eff.any():
            assert all(torch.isnan(getattr(got, name)[bi, ji]) for name in ("flip_between", "effect_null", "effect_instability_se"))
            continue
        enc = encoder[bi].numpy()
        between = reference_measures(enc, real[bi, ji].numpy(), eff, k, pairs)
        nulls = reference_measures(enc, null[bi, ji].numpy(), eff, k, pairs)
        within = {p: 0.0 for p in pairs} if paired else reference_measures(enc, enc, eff, k, pairs)
        want = {"flip_between": np.mean(list(between.values())), "flip_within": np.mean(list(within.values())),
                "flip_null_between": np.mean(list(nulls.values()))}
        want["effect_instability"] = want["flip_between"] - want["flip_within"]
        want["effect_null"] = want["flip_between"] - want["flip_null_between"]
        want["effect_instability_se"] = jackknife({p: between[p] - within[p] for p in pairs}, s)
        want["effect_null_se"] = jackknife({p: between[p] - nulls[p] for p in pairs}, s)
        for name, value in want.items():
            assert float(getattr(got, name)[bi, ji]) == pytest.approx(value, abs=1e-12), (bi, ji, name)


def test_equal_partitions_give_exactly_zero_effects():
    gen = torch.Generator().manual_seed(4)
    encoder = torch.randint(0, 5, (2, 6, 300), generator=gen)
    same = encoder[:, None].expand(2, 4, 6, 300).clone()
    effective = torch.rand(2, 4, 300, generator=gen) < 0.4
    got = ensemble_measures(encoder, same, same, effective, 5, paired=False)
    assert (got.flip_within > 0).all()  # the encoder's own seeds disagree ...
    for name in ("effect_instability", "effect_null", "effect_instability_se", "effect_null_se"):
        assert (getattr(got, name) == 0).all(), name  # ... yet equal partitions cancel bit for bit


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    from engine.data.scenes import write_scene_set
    from tests.test_controls import simulated_batch

    return simulated_batch(write_scene_set(tmp_path_factory.mktemp("ensemble"), 2, size=(400, 300), seed=9), 2)


def single_problem_members(x: torch.Tensor, cfg: AnalysisConfig, k: int, d: int) -> np.ndarray:
    """The S members of one token set clustered alone: (S, N)."""
    backend = TorchBackend()
    z = pca_transform(x[None], backend.pca_fit(x[None], d))
    km = backend.kmeans(z, k, n_init=cfg.n_init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed, keep_restarts=cfg.seeds)
    return km.restart_labels[0].numpy()


def test_rows_carry_the_ensemble_of_single_problems(batch):
    """flip_between / flip_within / flip_null_between of the batch rows equal those of each (image, scope)
    clustered on its own (its DATR tokens and its null built one at a time, outside the batch layout)."""
    cfg = AnalysisConfig(n_init=2, dims=(8,), alphas=(0.3,), seeds=4)
    columns = analyze_batch(batch, cfg, TorchBackend(), PROMPTS, CLASS_IDS, 5).columns
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    tau, alpha, d, k = cfg.taus[0], cfg.alphas[0], cfg.dims[0], cfg.ks[0]
    pairs = [p for p in itertools.product(range(cfg.seeds), repeat=2) if p[0] != p[1]]
    checked = 0
    for image in range(len(batch.image_ids)):
        tokens = batch.features[image].float().flatten(1).T.contiguous()
        n = tokens.shape[0]
        encoder = single_problem_members(tokens, cfg, k, d)
        kept = batch.scores[image] >= tau
        masks = batch.query_masks[image].float().reshape(*kept.shape, n)
        for scope_index, scope in enumerate(("global", *PROMPTS)):
            row = next(r for r in rows if r["image_id"] == batch.image_ids[image] and r["scope"] == scope)
            chosen = kept.clone() if scope_index == 0 else torch.zeros_like(kept)
            if scope_index > 0:
                chosen[scope_index - 1] = kept[scope_index - 1]
            effective = (torch.where(chosen[..., None], masks, torch.zeros_like(masks)).amax((0, 1)) >= 0.5).numpy()
            if not effective.any():
                assert row["flip_between"] is None and row["effect_null"] is None
                continue
            keys = batch.queries[image].float()[chosen]
            attended = attend_queries(tokens[None], keys[None, None], torch.ones(1, 1, len(keys), dtype=torch.bool))[0, 0]
            perm = controls.null_permutations(cfg.seed, [batch.image_ids[image]], [scope], tau, n)[0, 0]
            datr = single_problem_members(tokens + alpha * attended, cfg, k, d)
            null = single_problem_members(tokens + alpha * attended[perm], cfg, k, d)
            for name, members in (("flip_between", datr), ("flip_within", encoder), ("flip_null_between", null)):
                want = np.mean(list(reference_measures(encoder, members, effective, k, pairs).values()))
                assert row[name] == pytest.approx(want, abs=2e-3), (image, scope, name)
            checked += 1
    assert checked >= 6


def test_alpha_zero_gives_exactly_zero_effects_in_both_modes(batch):
    for init in ("independent", "encoder"):
        cfg = AnalysisConfig(n_init=2, dims=(8,), alphas=(0.0,), seeds=4, kmeans_init=init)
        columns = analyze_batch(batch, cfg, TorchBackend(), PROMPTS, CLASS_IDS, 5).columns
        measured = [i for i, e in enumerate(columns["effective_tokens"]) if e]
        assert len(measured) >= 6
        for name in ("effect_instability", "effect_null", "effect_instability_se", "effect_null_se"):
            assert all(columns[name][i] == 0 for i in measured), (init, name)
        assert all(columns["flip_ratio"][i] == 0 for i in measured)
        if init == "independent":
            assert any(columns["flip_within"][i] > 0 for i in measured)  # the zero is not for want of instability
