"""DATR token sets held as factors (F, A_g, alpha) give what the built token sets give: moments and
projections to rounding, the same PCA, the same labels from shared centres, the same rows."""

import math

import pytest
import torch

import engine.analysis.batch as batch_mod
from bench.dispatch import OpCounter
from engine.analysis.batch import (
    BatchState,
    ScopeMeasures,
    analyze_batch,
    batch_inputs,
    build_part,
    fit_and_project,
)
from engine.analysis.layout import ProblemLayout
from engine.core.config import AnalysisConfig, DataConfig
from engine.data.index import index_dataset
from engine.data.loader import make_loader
from engine.data.scenes import write_scene_set
from engine.sources.simulated import SimulatedSource
from kernels.backends.torch_backend import TorchBackend
from kernels.datr import DatrFactors, datr_moments, datr_project
from kernels.kmeans import kmeans, squared_distances
from kernels.pca import pca_transform, subspace_agreement, weighted_moments

PROMPTS = ("vegetation", "building", "road", "vehicle", "other")
CLASSES = (0, 1, 2, 3, 4)


def test_moments_and_projection_equal_those_of_the_built_token_sets():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 300, 12, generator=gen, dtype=torch.float64) + 3.0
    attended = torch.randn(2, 3, 300, 12, generator=gen, dtype=torch.float64)
    attended[:, 2] = attended[:, 0][:, torch.randperm(300, generator=gen)]  # a control: A_0 permuted over tokens
    factors = DatrFactors(tokens, attended, slot_group=[0, 1, 2, 0, 1], slot_alpha=[0.3, 0.3, 0.3, 0.8, 0.8])
    built = factors.materialise().reshape(2 * 6, 300, 12)
    assert torch.equal(built.reshape(2, 6, 300, 12)[:, 4], tokens + 0.8 * attended[:, 0])
    mean, cov, total = datr_moments(factors)
    ref_mean, ref_cov, ref_total = weighted_moments(built, None)
    assert torch.equal(total, ref_total)
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(cov, ref_cov, rtol=0, atol=1e-11)
    comps = torch.linalg.qr(torch.randn(12, 12, 4, generator=gen, dtype=torch.float64))[0].transpose(1, 2)
    fit = type("Fit", (), {"mean": mean, "components": comps})
    torch.testing.assert_close(datr_project(factors, mean, comps), pca_transform(built, fit), rtol=0, atol=1e-11)


def test_factors_copy_their_indexes_to_the_device_once():
    """The slot indexes are built when the factors are (two host-data tensors: on a GPU, two copies);
    moments, projection and the built reference then use them without a host read or a new one."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 100, 8, generator=gen)
    attended = torch.randn(2, 4, 100, 8, generator=gen)
    with OpCounter() as built:
        factors = DatrFactors(tokens, attended, slot_group=[0, 1, 2, 3, 0, 1, 2, 3, 3], slot_alpha=[0.3] * 4 + [0.8] * 4 + [1.0])
    assert built.host_data == 2 and built.syncs == 0
    assert [(g.alpha, g.slots.tolist(), None if g.groups is None else g.groups.tolist()) for g in factors.alpha_groups] == [
        (0.3, [1, 2, 3, 4], None), (0.8, [5, 6, 7, 8], None), (1.0, [9], [3])]
    comps = torch.linalg.qr(torch.randn(20, 8, 3, generator=gen))[0].transpose(1, 2)
    with OpCounter() as used:
        mean, cov, total = datr_moments(factors)
        datr_project(factors, mean, comps)
        factors.materialise()
    assert used.host_data == 0 and used.syncs == 0 and used.host_to_device == 0


@pytest.fixture(scope="module")
def grid_batch(tmp_path_factory):
    root = write_scene_set(tmp_path_factory.mktemp("f"), 2, size=(400, 300), seed=5)
    cfg = DataConfig(root=root, num_workers=0)
    loaded = next(iter(make_loader(index_dataset(cfg), cfg, 2, "cpu")))
    src = SimulatedSource(PROMPTS, CLASSES).run_batch(loaded.images, loaded.image_ids, (0.4, 0.6),
                                                      gt_mask=loaded.gt_mask, gt_tokens=loaded.gt_tokens)
    return src, loaded, AnalysisConfig(n_init=2, alphas=(0.3, 1.0), taus=(0.4, 0.6), dims=(16,), seeds=3)


def test_factored_pca_and_labels_match_the_built_reference(grid_batch):
    src, _, cfg = grid_batch
    layout = ProblemLayout.build(cfg, PROMPTS, CLASSES)
    state = BatchState(layout, cfg, ScopeMeasures.empty(2, layout.m, 2, 6, 5184, torch.device("cpu")), False)
    factors = build_part(batch_inputs(src, CLASSES, 5, None, None), layout.parts()[1], state, cfg)  # with the null controls
    backend = TorchBackend()
    fit, z = fit_and_project(factors, backend, 16)
    ref_fit, ref_z = fit_and_project(factors, backend, 16, materialise=True)
    assert (fit.explained_variance_ratio - ref_fit.explained_variance_ratio).abs().max() < 1e-5
    assert subspace_agreement(fit.components.double(), ref_fit.components.double()).min() > 0.9999
    # labels from shared centres, on the factored projection onto the reference's own components
    # (near-equal eigenvalues may rotate a fit's basis within their plane; the subspace check covers that)
    z_shared = datr_project(factors, ref_fit.mean, ref_fit.components)
    torch.testing.assert_close(z_shared, ref_z, rtol=0, atol=1e-3)
    ref = kmeans(ref_z, 5, n_init=2, seed=0)
    # the reference's final centres label the factored tokens as they label the built ones
    shared = squared_distances(z_shared, ref.centres).argmin(-1)
    agree = (shared == squared_distances(ref_z, ref.centres).argmin(-1)).double().mean(1)
    assert agree.min() >= 0.999, agree
    assert z.shape == ref_z.shape


def test_rows_match_the_built_reference(grid_batch, monkeypatch):
    src, loaded, cfg = grid_batch
    args = (src, cfg, TorchBackend(), PROMPTS, CLASSES, 5)
    kw = {"gt_tokens": loaded.gt_tokens, "gt_mask": loaded.gt_mask}
    rows = analyze_batch(*args, **kw).columns
    monkeypatch.setattr(batch_mod, "fit_and_project", lambda f, b, d: fit_and_project(f, b, d, materialise=True))
    ref = analyze_batch(*args, **kw).columns
    assert len(rows["scope"]) == 2 * (1 + 2 * 2 * 6)
    for name in ("image_id", "scope", "alpha", "tau", "effective_tokens", "cos_distance", "kept_queries"):
        assert rows[name] == ref[name], name
    for name in ("explained_variance_ratio",):
        assert max(abs(a - b) for a, b in zip(rows[name], ref[name], strict=True)) < 1e-5
    for name in ("inertia",):
        assert max(abs(a - b) / b for a, b in zip(rows[name], ref[name], strict=True)) < 1e-4
    for name in ("flip_ratio", "flip_ratio_processed", "flip_ratio_null", "flip_ratio_reseed", "accuracy", "nmi", "ari"):
        diffs = [abs(a - b) for a, b in zip(rows[name], ref[name], strict=True)
                 if not (a is None or b is None or math.isnan(a) or math.isnan(b))]
        assert max(diffs) < 2e-3, (name, max(diffs))
