"""The simulated scene set and the simulated SAM3 source (known truth -> metrics move right)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from engine.core.config import DataConfig, SimulatedConfig
from engine.core.errors import ConfigError, DataError
from engine.data.classes import UDD5_CLASSES
from engine.data.index import index_dataset
from engine.data.loader import make_loader
from engine.data.scenes import render_scene, write_scene_set
from engine.sources.base import SourceBatch
from engine.sources.simulated import SimulatedSource
from kernels.grid import pool_to_tokens

torch.set_num_threads(1)

CLASS_IDS = tuple(range(len(UDD5_CLASSES)))
EXACT = SimulatedConfig(mask_noise=0.0, miss_rate=0.0, false_positive_rate=0.0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = write_scene_set(tmp_path_factory.mktemp("scenes"), 3, size=(400, 300), seed=1)  # >= 288: no empty GT cells
    cfg = DataConfig(root=root, num_workers=0, decode="cpu")
    (batch,) = list(make_loader(index_dataset(cfg), cfg, 3, "cpu"))
    assert batch.errors == [] and len(batch.image_ids) == 3
    return batch


def run(batch, config=EXACT, taus=(0.5,), keep=False, order=None) -> SourceBatch:
    order = list(range(len(batch.image_ids))) if order is None else order
    source = SimulatedSource(UDD5_CLASSES, CLASS_IDS, "cpu", config)
    return source.run_batch(batch.images[order], [batch.image_ids[i] for i in order], taus,
                            batch.gt_mask[order], batch.gt_tokens[order], keep_mask_probs=keep)


def mean_iou(out: SourceBatch, gt_mask: torch.Tensor, t: int = 0) -> float:
    """Mean over (image, prompt) of IoU(union mask, GT class) on valid cells; both empty -> left out."""
    valid = gt_mask != 255
    ious = []
    for p, c in enumerate(CLASS_IDS):
        pred, truth = out.union_masks[:, t, p] & valid, (gt_mask == c) & valid
        for inter, union in zip((pred & truth).sum((1, 2)).tolist(), (pred | truth).sum((1, 2)).tolist(), strict=True):
            if union:
                ious.append(inter / union)
    return float(np.mean(ious))


# ----------------------------------------------------------------------------- source contract


def test_shapes_dtypes_and_describe(scenes):
    out = run(scenes, SimulatedConfig(), taus=(0.3, 0.5))
    b, p = 3, len(UDD5_CLASSES)
    assert out.features.shape == (b, 256, 72, 72) and out.features.dtype == torch.float32
    assert out.queries.shape == (b, p, 200, 256) and out.queries.dtype == torch.float32
    assert out.scores.shape == (b, p, 200) and out.scores.dtype == torch.float32
    assert out.query_masks.shape == (b, p, 200, 72, 72) and out.query_masks.dtype == torch.float16
    assert out.union_masks.shape == (b, 2, p, 288, 288) and out.union_masks.dtype == torch.bool
    assert out.mask_probs is None and out.taus == (0.3, 0.5) and out.image_ids == scenes.image_ids
    for t in (out.features, out.queries, out.scores, out.query_masks.float()):
        assert torch.isfinite(t).all()
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert (out.union_masks[:, 0] >= out.union_masks[:, 1]).all()  # a lower tau keeps more
    # LayerNorm-scaled queries: zero mean, unit variance per query
    assert out.queries.mean(-1).abs().max() < 1e-4
    assert (out.queries.var(-1, unbiased=False) - 1).abs().max() < 1e-3
    info = SimulatedSource(UDD5_CLASSES, CLASS_IDS, "cpu").describe()
    assert info["simulated"] is True and info["model"] == "simulated" and "SIMULATED" in info["note"]
    assert info["config"]["seed"] == 0


def test_batch_of_n_equals_n_batches_of_one_in_any_order(scenes):
    config = SimulatedConfig(mask_noise=0.3, miss_rate=0.2, false_positive_rate=2.0)
    whole = run(scenes, config, taus=(0.3, 0.5))
    reversed_ = run(scenes, config, taus=(0.3, 0.5), order=[2, 1, 0])
    for i in range(3):
        single = run(scenes, config, taus=(0.3, 0.5), order=[i])
        for name in ("features", "queries", "scores", "query_masks", "union_masks"):
            assert torch.equal(getattr(whole, name)[i], getattr(single, name)[0]), name
            assert torch.equal(getattr(whole, name)[i], getattr(reversed_, name)[2 - i]), name


def test_seed_decides_and_same_seed_repeats(scenes):
    a, b = run(scenes, SimulatedConfig(seed=3)), run(scenes, SimulatedConfig(seed=3))
    c = run(scenes, SimulatedConfig(seed=4))
    assert torch.equal(a.features, b.features) and torch.equal(a.scores, b.scores)
    assert not torch.equal(a.features, c.features) and not torch.equal(a.scores, c.scores)


def test_needs_ground_truth(scenes):
    source = SimulatedSource(UDD5_CLASSES, CLASS_IDS, "cpu")
    with pytest.raises(DataError, match="--model sam3"):
        source.run_batch(scenes.images, scenes.image_ids, (0.5,))
    tokens_only = source.run_batch(scenes.images, scenes.image_ids, (0.5,), gt_tokens=scenes.gt_tokens)
    assert tokens_only.union_masks.shape == (3, 1, 5, 288, 288)


def test_config_validation_names_the_field():
    for kwargs, name in [({"miss_rate": 1.5}, "miss_rate"), ({"mask_noise": -0.1}, "mask_noise"),
                         ({"feature_noise": float("nan")}, "feature_noise"), ({"variation_rank": 0}, "variation_rank")]:
        with pytest.raises(ConfigError, match=f"simulated.{name}"):
            SimulatedConfig(**kwargs)
    with pytest.raises(ConfigError, match="one GT class per prompt"):
        SimulatedSource(("road",), (2, 3), "cpu")


def test_mask_probs_agree_with_query_masks_and_union(scenes):
    one = replace(scenes, images=scenes.images[:1], gt_mask=scenes.gt_mask[:1], gt_tokens=scenes.gt_tokens[:1],
                  image_ids=scenes.image_ids[:1])
    taus = (0.3, 0.5)
    out = run(one, SimulatedConfig(miss_rate=0.0, false_positive_rate=2.0), taus=taus, keep=True)
    assert out.mask_probs.shape == (1, 5, 200, 288, 288) and out.mask_probs.dtype == torch.float16
    pooled = pool_to_tokens(out.mask_probs.float())
    assert (pooled - out.query_masks.float()).abs().max() < 2e-3
    for t, tau in enumerate(taus):
        kept = (out.scores >= tau)[..., None, None]
        union = ((out.mask_probs >= 0.5) & kept).any(dim=2)
        assert torch.equal(union, out.union_masks[:, t])
    background = out.scores < 0.2  # with no misses, only background queries score this low
    assert background.sum() > 150
    assert (out.mask_probs.flatten(3).amax(-1)[background] < 0.5).all()  # background never in a union


# ----------------------------------------------------------------------------- known truth


def test_exact_settings_reproduce_the_gt_instances(scenes):
    out = run(scenes, EXACT)
    assert mean_iou(out, scenes.gt_mask) > 0.99
    gt = scenes.gt_mask.numpy()
    for i in range(3):
        for p, c in enumerate(CLASS_IDS):
            comps, n = ndimage.label(gt[i] == c)
            areas = np.bincount(comps.ravel(), minlength=n + 1)[1:]
            assert int((out.scores[i, p] >= 0.5).sum()) == int((areas >= EXACT.min_instance_area).sum())


def test_more_mask_noise_lowers_iou(scenes):
    ious = [mean_iou(run(scenes, replace(EXACT, mask_noise=m)), scenes.gt_mask) for m in (0.0, 0.3, 1.0)]
    assert ious[0] > ious[1] > ious[2], ious
    assert ious[2] < 0.85


def test_more_misses_lower_iou(scenes):
    ious = [mean_iou(run(scenes, replace(EXACT, miss_rate=m)), scenes.gt_mask) for m in (0.0, 0.5, 1.0)]
    assert ious[0] > ious[1] > ious[2] == 0.0, ious


def test_false_positives_lower_iou_and_add_kept_queries(scenes):
    clean, noisy = run(scenes, EXACT), run(scenes, replace(EXACT, false_positive_rate=6.0))
    assert mean_iou(noisy, scenes.gt_mask) < mean_iou(clean, scenes.gt_mask)
    assert (noisy.scores >= 0.5).sum() > (clean.scores >= 0.5).sum()


def test_features_carry_class_structure(scenes):
    out = run(scenes, SimulatedConfig())
    feats = torch.nn.functional.normalize(out.features[0].flatten(1).T, dim=1)  # (5184, 256)
    labels = scenes.gt_tokens[0].flatten().long()
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(labels), generator=g)[:1500]
    f, lab = feats[pick], labels[pick]
    cos = f @ f.T
    same = (lab[:, None] == lab[None, :]) & ~torch.eye(len(pick), dtype=torch.bool)
    diff = lab[:, None] != lab[None, :]
    assert cos[same].mean() > cos[diff].mean() + 0.3, (cos[same].mean(), cos[diff].mean())
    # within-class variation and noise: same-class tokens are not identical
    assert cos[same].mean() < 0.98
    # spatial smoothness: horizontal neighbours are more alike than random pairs of the same class
    fmap = torch.nn.functional.normalize(out.features[0], dim=0)
    neighbour = (fmap[:, :, 1:] * fmap[:, :, :-1]).sum(0)
    same_row = (scenes.gt_tokens[0][:, 1:] == scenes.gt_tokens[0][:, :-1])
    assert neighbour[same_row].mean() > cos[same].mean()


# ----------------------------------------------------------------------------- scene set


def _digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_scene_set_is_deterministic_simulated_udd5(tmp_path):
    a = write_scene_set(tmp_path / "a", 2, size=(160, 120), seed=5)
    b = write_scene_set(tmp_path / "b", 2, size=(160, 120), seed=5)
    c = write_scene_set(tmp_path / "c", 2, size=(160, 120), seed=6)
    assert a == tmp_path / "a" / "UDD5"
    assert _digest(a) == _digest(b) != _digest(c)
    assert "SIMULATED" in (a / "README.txt").read_text()
    assert sorted(p.name for p in (a / "val" / "src").iterdir()) == ["scene_0000.JPG", "scene_0001.JPG"]
    gt = np.asarray(Image.open(a / "val" / "gt" / "scene_0000.png"))
    assert gt.shape == (120, 160) and gt.dtype == np.uint8 and set(np.unique(gt)) <= set(range(5))
    index = index_dataset(DataConfig(root=a, num_workers=0))
    assert index.dataset == "udd5" and len(index.items) == 2 and index.bad == []


def test_scenes_hold_every_class_with_vehicles_on_roads():
    for i in range(3):
        image, labels = render_scene((320, 240), seed=0, index=i)
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        assert set(np.unique(labels)) == set(range(5)), np.unique(labels)
        vehicles = labels == 3
        ring = ndimage.binary_dilation(vehicles, iterations=1) & ~vehicles
        assert (labels[ring] == 2).mean() > 0.9  # vehicles sit on roads
        # classes look different: mean colour of road and vegetation differ clearly
        assert np.abs(image[labels == 2].mean(0) - image[labels == 0].mean(0)).max() > 20


# ----------------------------------------------------------------------------- planted effect


@pytest.mark.parametrize("effect", [0.5, 1.0, 2.0])
def test_planted_effect_adds_one_kept_query_over_the_known_part_and_changes_nothing_else(scenes, effect):
    config = SimulatedConfig()
    base = run(scenes, config, taus=(0.5, 0.95), keep=True)
    planted = run(scenes, replace(config, planted_effect=effect, planted_class=0), taus=(0.5, 0.95), keep=True)
    assert torch.equal(base.features, planted.features)
    differs = (base.queries != planted.queries).any(-1)  # (B, P, Q)
    assert differs[:, 1:].sum() == 0  # only the planted prompt (vegetation, class 0) changes ...
    assert (differs[:, 0].sum(-1) == 1).all()  # ... in exactly one slot per image
    slot = differs[:, 0].float().argmax(-1)
    for i in range(len(scenes.image_ids)):
        q = int(slot[i])
        assert float(base.scores[i, 0, q]) < 0.2 <= 0.9 == pytest.approx(float(planted.scores[i, 0, q]))  # was background
        others = torch.ones(base.scores.shape[-1], dtype=torch.bool)
        others[q] = False
        assert torch.equal(base.scores[i, 0, others], planted.scores[i, 0, others])
        assert torch.equal(base.query_masks[i, 0, others], planted.query_masks[i, 0, others])
        part = planted.query_masks[i, 0, q].float().flatten() > 0.5  # the known part on the token grid
        veg = scenes.gt_tokens[i].flatten() == 0
        assert part.any() and not (part & ~veg).any()
        # a share e/2 of the class, less some of its edge tokens, whose pooled mask stays under 0.5
        assert part.sum() / veg.sum() == pytest.approx(effect / 2, abs=0.07)
    assert torch.equal(base.union_masks[:, 0, 1:], planted.union_masks[:, 0, 1:])
    assert torch.equal(base.union_masks[:, 1], planted.union_masks[:, 1])  # tau 0.95 > the planted score


def test_planted_effect_settings_are_checked():
    with pytest.raises(ConfigError, match="planted_effect"):
        SimulatedConfig(planted_effect=2.5)
    assert SimulatedConfig(planted_effect=2.0).planted_effect == 2.0  # the whole class
    with pytest.raises(ConfigError, match="planted_effect"):
        SimulatedConfig(planted_effect=-0.1)
    with pytest.raises(ConfigError, match="planted_class = 7 is no prompt's class"):
        SimulatedSource(UDD5_CLASSES, CLASS_IDS, "cpu", SimulatedConfig(planted_effect=0.5, planted_class=7))
