"""analyze_batch on its own: the columns it fills with and without ground truth."""

import pytest
import torch

from engine.analysis.batch import analyze_batch
from engine.core.config import AnalysisConfig, DataConfig
from engine.data.index import index_dataset
from engine.data.loader import make_loader
from engine.data.scenes import write_scene_set
from engine.sources.simulated import SimulatedSource
from kernels.backends.torch_backend import TorchBackend

PROMPTS = ("vegetation", "building", "road", "vehicle", "other")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = write_scene_set(tmp_path_factory.mktemp("a"), 2, size=(400, 300), seed=9)
    cfg = DataConfig(root=root, num_workers=0)
    loaded = next(iter(make_loader(index_dataset(cfg), cfg, 2, "cpu")))
    src = SimulatedSource(PROMPTS, (0, 1, 2, 3, 4)).run_batch(loaded.images, loaded.image_ids, (0.5,),
                                                               gt_mask=loaded.gt_mask, gt_tokens=loaded.gt_tokens)
    return src, loaded


def test_without_ground_truth_the_internal_scores_replace_the_gt_metrics(batch):
    src, _ = batch
    cfg = AnalysisConfig(n_init=1, dims=(8,), silhouette_sample=200, seeds=3)
    cols = analyze_batch(src, cfg, TorchBackend(), PROMPTS, (0, 1, 2, 3, 4), 5).columns
    n = 2 * 7
    assert all(len(v) == n for v in cols.values())
    assert all(v is None for name in ("accuracy", "nmi", "ari", "iou") for v in cols[name])
    assert all(-1 <= v <= 1 for v in cols["silhouette"])
    assert all(v > 0 for name in ("calinski_harabasz", "davies_bouldin") for v in cols[name])


def test_with_ground_truth_the_gt_metrics_are_filled_and_internal_scores_left_out(batch):
    src, loaded = batch
    cfg = AnalysisConfig(n_init=1, dims=(8,), seeds=3)
    cols = analyze_batch(src, cfg, TorchBackend(), PROMPTS, (0, 1, 2, 3, 4), 5,
                         gt_tokens=loaded.gt_tokens, gt_mask=loaded.gt_mask).columns
    assert all(0 < v <= 1 for v in cols["accuracy"]) and all(v is None for v in cols["silhouette"])
    scopes = cols["scope"]
    iou = [v for s, v in zip(scopes, cols["iou"], strict=True) if s not in ("encoder", "global")]
    assert iou and all(v is None or 0 <= v <= 1 for v in iou)
    assert torch.isfinite(torch.tensor([v for v in cols["inertia"]])).all()


def test_kmeans_in_chunks_of_problems_gives_the_rows_of_one_call(batch, monkeypatch):
    import engine.analysis.controls as controls_mod

    src, loaded = batch
    cfg = AnalysisConfig(n_init=2, dims=(8,), seeds=3)
    args = (src, cfg, TorchBackend(), PROMPTS, (0, 1, 2, 3, 4), 5)
    whole = analyze_batch(*args, gt_tokens=loaded.gt_tokens, gt_mask=loaded.gt_mask).columns
    calls = []
    real = TorchBackend.kmeans
    monkeypatch.setattr(TorchBackend, "kmeans", lambda self, x, *a, **kw: calls.append(x.shape[0]) or real(self, x, *a, **kw))
    restarts = max(cfg.n_init, cfg.seeds)  # the seed ensemble's restarts set the memory per problem
    monkeypatch.setattr(controls_mod, "kmeans_memory_budget", lambda device: 3 * controls_mod.kmeans_bytes_per_problem(5184, 8, 5, restarts))
    chunked = analyze_batch(*args, gt_tokens=loaded.gt_tokens, gt_mask=loaded.gt_mask).columns
    # 26 problems (2 images x 7 slots, then their 2 x 6 null controls) in chunks of 3; then the 2 reseeded encoders
    assert calls == [3] * 8 + [2] + [2]
    assert chunked == whole
