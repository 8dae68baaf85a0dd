"""SIMULATED SAM3: encoder features and decoder outputs made up from the ground truth.

`--model simulated` runs the whole engine without the SAM3 weights. Nothing here is a
neural network and no number it produces says anything about SAM3 itself; it exists so
the demo, the tests and the benchmarks can exercise every stage with the real shapes,
and so tests can check that metrics move the right way against a known truth.

Features (B, 256, 72, 72), per token j with GT class c(j) (255 = ignore has its own):
    F_j = mu_c(j)                               class mean (shared by all images of a seed)
        + sum_r a_r(j) V_{c(j), r}              smooth within-class variation (per image)
        + colour(j) W                           a little of the image's local colour
        + feature_noise * eps_j                 i.i.d. noise
    then a Gaussian blur of sigma = feature_smoothing tokens over the map (spatial
    smoothness; it also softens class boundaries and shrinks the noise).

Decoder outputs, for each prompt p (targeting GT class c_p) and each image:
  * every connected component of (GT == c_p) on the 288 grid of at least
    min_instance_area pixels (largest first, at most 200 - false positives) is an
    instance with one query. Detected (prob 1 - miss_rate): score in [0.6, 0.95];
    missed: score in [0.02, 0.35]. Its query vector is the mean feature over the
    instance's tokens plus query_noise, LayerNorm-scaled (zero mean, unit variance).
    Its mask is the instance region; with mask_noise > 0 the edges are blurred
    (Gaussian sigma 0.5 + 4 * mask_noise pixels at 288) and moved by a smooth noise
    field (amplitude mask_noise), so more mask_noise -> lower IoU.
  * Poisson(false_positive_rate) false positives: an elliptical blob anywhere, score
    in [0.35, 0.75], query halfway between the blob's mean feature and mu_{c_p}.
  * the remaining queries are background: score < 0.2 and a faint separable blob
    (peak < 0.3, so never part of a union mask).
  The 200 query slots are shuffled. query_masks = pool_to_tokens(mask probabilities);
  union_masks[t, p] = OR over queries with score >= taus[t] of (probability >= 0.5).

Planted effect (`[simulated] planted_effect = e` in [0, 2], `planted_class = c`; for calibrating
the effect statistics, README "Effects"). Two fixed unit directions per source: `select`, class
c's first within-class variation direction made orthogonal to mu_c (token . select follows the
smooth coordinate a_1(j) within the class), and `away`, orthogonal to every class mean,
variation direction and the colour projection of the labels in use (token . away is noise only).
In each image, the known part P of class c is its tokens with the largest token . select, a
share e / 2 of the class (half at e = 1, all of it at e = 2): a smooth, spatially coherent piece. The prompt of
class c gets one more kept query (score 0.9, mask = P), in the slot of its last background
query (no other draw changes):
    Q_plant = LayerNorm(mean feature over P) + PLANT_SELECT * (select - b mu_c / |mu_c|^2) + PLANT_SCALE * away
with b the threshold of token . select that defines P. A class-c token's logit for Q_plant then
rises with (token . select - b), so P's tokens attend to it and the rest of the class does
not; DATR moves them along `away`, out of the class's cluster (about alpha * PLANT_SCALE), across
the structural boundary that L_enc draws around the class. A larger e moves a larger part.
e = 0 adds nothing: the source is then bitwise what it is without the knob.

Determinism: the output for an image depends only on (config, prompts/class ids, the
image id, that image's GT and pixels) -- never on its batch or its position in it. Every
random draw comes from a CPU generator seeded with (seed, crc32(image_id)), and all the
arithmetic runs on the CPU; results are moved to the device at the end, so a CPU run
and a GPU run see the same numbers.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from engine.core.config import MAX_FALSE_POSITIVES, SimulatedConfig
from engine.core.errors import ConfigError, DataError
from engine.core.geometry import FEATURE_DIM, MASK_GRID, NUM_QUERIES, TOKEN_GRID
from engine.sources.base import SourceBatch
from kernels.grid import IGNORE, majority_downsample, pool_to_tokens

NUM_LABELS = 256  # one class mean per possible uint8 label value (255 = ignore included)
PLANT_SCALE = 64.0  # the planted query's displacement along `away` (4x a LayerNormed query's norm)
PLANT_SELECT = 32.0  # its weight on the selecting direction: 2 logits per unit of token . select
PLANT_SCORE = 0.9
POOL = MASK_GRID // TOKEN_GRID


def image_generator(seed: int, image_id: str) -> torch.Generator:
    """A CPU generator that depends only on (seed, image_id)."""
    key = (seed * 0x9E3779B97F4A7C15 + zlib.crc32(image_id.encode("utf-8"))) % (2**63 - 1)
    return torch.Generator().manual_seed(key)


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def smooth_field(gen: torch.Generator, channels: int, side: int, cells: int) -> torch.Tensor:
    """(channels, side, side) smooth noise, ~unit std: a cells x cells grid upsampled bilinearly."""
    coarse = torch.randn(1, channels, cells, cells, generator=gen)
    field = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)[0]
    return field / field.flatten(1).std(dim=1).clamp_min(1e-6)[:, None, None]


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur_map(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (C, H, W) float map, reflect padding; sigma in pixels."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma)
    c, r = x.shape[0], (len(k) - 1) // 2
    y = F.pad(x[None], (r, r, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def layer_norm(v: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine over the last dim (what SAM3's decoder queries look like)."""
    return F.layer_norm(v, (v.shape[-1],))


class SimulatedSource:
    """A FeatureSource whose outputs are derived from the GT (seeded; see module docstring)."""

    name = "simulated"

    def __init__(self, prompts: tuple[str, ...], class_ids: tuple[int, ...], device: torch.device | str = "cpu",
                 config: SimulatedConfig | None = None):
        if len(prompts) != len(class_ids) or not prompts:
            raise ConfigError(f"simulated model: need one GT class per prompt, got {len(prompts)} prompts and {len(class_ids)} class ids")
        if any(not 0 <= c < IGNORE for c in class_ids):
            raise ConfigError(f"simulated model: class ids must be in [0, 254], got {tuple(class_ids)}")
        cfg = config or SimulatedConfig()
        if cfg.planted_effect > 0 and cfg.planted_class not in class_ids:
            raise ConfigError(f"simulated.planted_class = {cfg.planted_class} is no prompt's class (the prompts' classes are "
                              f"{list(class_ids)}): plant the effect in one of them")
        self.prompts = tuple(prompts)
        self.class_ids = tuple(int(c) for c in class_ids)
        self.device = torch.device(device)
        self.config = config or SimulatedConfig()
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        c = FEATURE_DIM
        self.class_means = torch.randn(NUM_LABELS, c, generator=gen) * cfg.class_separation  # mu_c
        self.variation = torch.randn(NUM_LABELS, cfg.variation_rank, c, generator=gen) * (cfg.within_class / math.sqrt(cfg.variation_rank))
        self.colour_projection = torch.randn(3, c, generator=gen) * cfg.colour_weight
        self.plant_direction = self._plant_direction() if cfg.planted_effect > 0 else None

    def describe(self) -> dict:
        return {
            "model": "simulated",
            "simulated": True,
            "note": "SIMULATED: features and decoder outputs derived from the ground truth (engine/sources/simulated.py), not SAM3",
            "prompts": list(self.prompts),
            "class_ids": list(self.class_ids),
            "device": str(self.device),
            "config": asdict(self.config),
        }

    # ------------------------------------------------------------------ batch

    def run_batch(
        self,
        images: torch.Tensor,  # (B, 3, 1008, 1008) uint8, any device
        image_ids: list[str],
        taus: tuple[float, ...],
        gt_mask: torch.Tensor | None = None,  # (B, 288, 288) uint8, 255 = ignore
        gt_tokens: torch.Tensor | None = None,  # (B, 72, 72) uint8, 255 = ignore
        keep_mask_probs: bool = False,
    ) -> SourceBatch:
        b = len(image_ids)
        assert images.ndim == 4 and images.shape[:2] == (b, 3), f"images must be (B, 3, S, S) for {b} ids, got {tuple(images.shape)}"
        if gt_mask is None and gt_tokens is None:
            raise DataError(
                "the simulated model needs ground truth (gt/ label PNGs) for every image; "
                "use --model sam3 or a dataset with gt/"
            )
        taus = tuple(float(t) for t in taus)
        if not taus or any(not 0.0 <= t <= 1.0 for t in taus):
            raise ConfigError(f"score thresholds (tau) must be in [0, 1], got {taus}")
        if gt_mask is None:  # tokens only: nearest upsampling is the best we can do
            gt_mask = gt_tokens.repeat_interleave(POOL, dim=-2).repeat_interleave(POOL, dim=-1)
        gt_mask = gt_mask.to("cpu", torch.uint8)
        assert gt_mask.shape == (b, MASK_GRID, MASK_GRID), f"gt_mask must be (B, 288, 288), got {tuple(gt_mask.shape)}"
        if gt_tokens is None:
            gt_tokens = majority_downsample(gt_mask, TOKEN_GRID, num_classes=IGNORE)  # every label but 255 votes
        gt_tokens = gt_tokens.to("cpu", torch.uint8)
        assert gt_tokens.shape == (b, TOKEN_GRID, TOKEN_GRID), f"gt_tokens must be (B, 72, 72), got {tuple(gt_tokens.shape)}"
        colour = self._token_colour(images)  # (B, 3, 72, 72) in [-1, 1], CPU

        per_image = [
            self._one_image(image_ids[i], colour[i], gt_mask[i], gt_tokens[i], taus, keep_mask_probs) for i in range(b)
        ]
        dev = self.device

        def stack(key: str) -> torch.Tensor:
            return torch.stack([out[key] for out in per_image]).to(dev)

        return SourceBatch(
            image_ids=list(image_ids),
            features=stack("features"),
            queries=stack("queries"),
            scores=stack("scores"),
            query_masks=stack("query_masks"),
            union_masks=stack("union_masks"),
            taus=taus,
            mask_probs=stack("mask_probs") if keep_mask_probs else None,
        )

    def _token_colour(self, images: torch.Tensor) -> torch.Tensor:
        side = images.shape[-1]
        assert side % TOKEN_GRID == 0, f"image side {side} is not a multiple of {TOKEN_GRID}"
        pooled = F.avg_pool2d(images.cpu().float(), kernel_size=side // TOKEN_GRID)  # (B, 3, 72, 72), on the CPU like the rest
        return (pooled / 127.5) - 1.0

    # ------------------------------------------------------------------ one image

    def _one_image(self, image_id: str, colour: torch.Tensor, gt_mask: torch.Tensor, gt_tokens: torch.Tensor,
                   taus: tuple[float, ...], keep_mask_probs: bool) -> dict[str, torch.Tensor]:
        gen = image_generator(self.config.seed, image_id)
        features = self._features(gen, colour, gt_tokens)  # (C, 72, 72)
        token_features = features.flatten(1).T  # (N, C)
        gt = gt_mask.numpy()
        outs = [self._prompt(gen, gt, class_id, token_features, taus, keep_mask_probs) for class_id in self.class_ids]
        if self.plant_direction is not None:
            for out, class_id in zip(outs, self.class_ids, strict=True):
                if class_id == self.config.planted_class:
                    self._plant(out, gt, gt_tokens, token_features, taus, keep_mask_probs)
        for out in outs:
            out.pop("spare_slot")
        merged = {key: torch.stack([o[key] for o in outs]) for key in outs[0]}
        merged["union_masks"] = merged["union_masks"].transpose(0, 1).contiguous()  # (T, P, 288, 288)
        merged["features"] = features
        return merged

    def _features(self, gen: torch.Generator, colour: torch.Tensor, gt_tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        labels = gt_tokens.flatten().long()  # (N,)
        feats = self.class_means[labels]  # (N, C)
        coeff = smooth_field(gen, cfg.variation_rank, TOKEN_GRID, cells=9).flatten(1).T  # (N, R)
        for label in labels.unique().tolist():  # a handful of classes: one small matmul each
            where = labels == label
            feats[where] += coeff[where] @ self.variation[label]
        feats += colour.flatten(1).T @ self.colour_projection
        feats = feats.T.reshape(FEATURE_DIM, TOKEN_GRID, TOKEN_GRID)
        feats = feats + cfg.feature_noise * torch.randn(FEATURE_DIM, TOKEN_GRID, TOKEN_GRID, generator=gen)
        return blur_map(feats, cfg.feature_smoothing).contiguous()

    def _prompt(self, gen: torch.Generator, gt: np.ndarray, class_id: int, token_features: torch.Tensor,
                taus: tuple[float, ...], keep_mask_probs: bool) -> dict[str, torch.Tensor]:
        cfg = self.config
        q, s = NUM_QUERIES, MASK_GRID
        n_fp = min(int(torch.poisson(torch.tensor([float(cfg.false_positive_rate)]), generator=gen).item()), MAX_FALSE_POSITIVES)
        regions = self._instances(gt, class_id, q - n_fp) + self._false_positive_blobs(gen, n_fp)
        n_inst = len(regions) - n_fp
        n_obj = len(regions)

        detected = torch.rand(n_inst, generator=gen) >= cfg.miss_rate
        scores_obj = torch.cat([
            torch.where(detected, _uniform(gen, n_inst, 0.6, 0.95), _uniform(gen, n_inst, 0.02, 0.35)),
            _uniform(gen, n_fp, 0.35, 0.75),
        ])
        wobble = smooth_field(gen, 1, s, cells=12)[0] if cfg.mask_noise > 0 else None
        probs = torch.stack([self._soften(r, wobble) for r in regions]) if n_obj else torch.zeros(0, s, s)

        # query vectors: the mean feature under each region (tokens weighted by coverage)
        cover = pool_to_tokens(torch.stack(regions).float()) if n_obj else torch.zeros(0, TOKEN_GRID, TOKEN_GRID)
        weights = cover.flatten(1)
        region_mean = (weights @ token_features) / weights.sum(1, keepdim=True).clamp_min(1e-6)  # (n_obj, C)
        target = self.class_means[class_id]
        region_mean[n_inst:] = 0.5 * region_mean[n_inst:] + 0.5 * target
        queries_obj = layer_norm(region_mean + cfg.query_noise * torch.randn(n_obj, FEATURE_DIM, generator=gen))

        n_bg = q - n_obj
        scores_bg, queries_bg, tokens_bg, bg_full = self._background(gen, n_bg, target)

        order = torch.randperm(q, generator=gen)  # slot order[k] holds query k (objects first)
        scores = torch.empty(q)
        scores[order] = torch.cat([scores_obj, scores_bg])
        queries = torch.empty(q, FEATURE_DIM)
        queries[order] = torch.cat([queries_obj, queries_bg])
        query_masks = torch.empty(q, TOKEN_GRID, TOKEN_GRID)
        query_masks[order] = torch.cat([pool_to_tokens(probs), tokens_bg])

        # thresholded as stored (float16) so union_masks agrees with mask_probs exactly;
        # background peaks are < 0.5: only objects can enter a union
        binary = probs.half() >= 0.5
        union = torch.stack([
            (binary & (scores_obj >= tau)[:, None, None]).any(0) if n_obj else torch.zeros(s, s, dtype=torch.bool)
            for tau in taus
        ])
        out = {"queries": queries, "scores": scores, "query_masks": query_masks.half(), "union_masks": union,
               "spare_slot": int(order[q - 1]) if n_bg > 0 else None}  # the last background query's slot
        if keep_mask_probs:
            full = torch.empty(q, s, s, dtype=torch.float16)
            full[order[:n_obj]] = probs.half()
            full[order[n_obj:]] = bg_full().half()
            out["mask_probs"] = full
        return out

    @staticmethod
    def _background(gen: torch.Generator, n_bg: int, target: torch.Tensor):
        """The n_bg background queries: scores < 0.2, vectors near the class mean, faint separable blobs.

        Returns scores (n_bg,), queries (n_bg, C), their maps pooled to the token grid (n_bg, 72, 72)
        and a function giving the full-resolution maps (n_bg, 288, 288) when they are kept."""
        s = MASK_GRID
        scores_bg = 0.2 * torch.rand(n_bg, generator=gen) ** 2
        queries_bg = layer_norm(0.3 * target + torch.randn(n_bg, FEATURE_DIM, generator=gen))
        peak = _uniform(gen, n_bg, 0.02, 0.3)
        centre = torch.rand(n_bg, 2, generator=gen) * s
        spread = _uniform(gen, 2 * n_bg, 5.0, 40.0).view(n_bg, 2)
        axis = torch.arange(s, dtype=torch.float32) + 0.5
        profile_y = torch.exp(-0.5 * ((axis[None] - centre[:, :1]) / spread[:, :1]) ** 2)  # (n_bg, 288)
        profile_x = torch.exp(-0.5 * ((axis[None] - centre[:, 1:]) / spread[:, 1:]) ** 2)
        pool1d = lambda p: p.view(n_bg, TOKEN_GRID, POOL).mean(-1)  # noqa: E731 -- pooling a separable map = pooling each factor
        tokens_bg = peak[:, None, None] * pool1d(profile_y)[:, :, None] * pool1d(profile_x)[:, None, :]
        return scores_bg, queries_bg, tokens_bg, lambda: peak[:, None, None] * profile_y[:, :, None] * profile_x[:, None, :]

    def _plant_direction(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(select, away): select is the planted class's first variation direction made orthogonal to its
        mean (token . select ~ a_1(j) within the class); away is a unit vector orthogonal to the means and
        variation directions of every label the prompts and the ignore label use, and to the colour
        projection (so token . away is only noise)."""
        c = self.config.planted_class
        labels = sorted({*self.class_ids, IGNORE})
        mean = self.class_means[c].double()
        select = self.variation[c, 0].double()
        select = select - mean * (mean @ select) / (mean @ mean)
        basis = torch.cat([self.class_means[labels], self.variation[labels].reshape(-1, FEATURE_DIM), self.colour_projection])
        gen = torch.Generator().manual_seed(self.config.seed * 7919 + 104729)  # its own stream: no other draw moves
        away = torch.randn(FEATURE_DIM, generator=gen, dtype=torch.float64)
        q, _ = torch.linalg.qr(basis.double().T)  # (C, r) orthonormal basis of their span
        away = away - q @ (q.T @ away)
        return (select / select.norm()).float(), (away / away.norm()).float()

    def _plant(self, out: dict, gt: np.ndarray, gt_tokens: torch.Tensor, token_features: torch.Tensor,
               taus: tuple[float, ...], keep_mask_probs: bool) -> None:
        """Put the planted query into the prompt's spare (background) slot; see the module docstring."""
        c = self.config.planted_class
        slot = out["spare_slot"]
        in_class = gt_tokens.flatten() == c  # (N,)
        if slot is None or int(in_class.sum()) < 2:
            return
        select, away = self.plant_direction
        along = token_features[in_class] @ select
        threshold = torch.quantile(along.double(), 1.0 - self.config.planted_effect / 2).float()
        part = in_class.clone()
        part[in_class] = along > threshold
        if not bool(part.any()):
            return
        mean = self.class_means[c]
        query = (layer_norm(token_features[part].mean(0)) + PLANT_SELECT * (select - threshold * mean / (mean @ mean))
                 + PLANT_SCALE * away)
        region = part.reshape(TOKEN_GRID, TOKEN_GRID).repeat_interleave(POOL, 0).repeat_interleave(POOL, 1)
        region = region & torch.from_numpy(gt == c)  # (288, 288)
        out["queries"][slot] = query
        out["scores"][slot] = PLANT_SCORE
        out["query_masks"][slot] = pool_to_tokens(region[None].float())[0].half()
        for t, tau in enumerate(taus):
            if PLANT_SCORE >= tau:
                out["union_masks"][t] |= region
        if keep_mask_probs:
            out["mask_probs"][slot] = region.half()

    def _instances(self, gt: np.ndarray, class_id: int, limit: int) -> list[torch.Tensor]:
        """Boolean (288, 288) regions of the connected components of GT == class, largest first."""
        components, count = ndimage.label(gt == class_id)
        if count == 0 or limit <= 0:
            return []
        areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
        keep = [k + 1 for k in np.argsort(-areas, kind="stable") if areas[k] >= self.config.min_instance_area][:limit]
        comp = torch.from_numpy(components)
        return [comp == k for k in keep]

    def _false_positive_blobs(self, gen: torch.Generator, count: int) -> list[torch.Tensor]:
        s = MASK_GRID
        yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
        blobs = []
        for _ in range(count):
            cy, cx = (torch.rand(2, generator=gen) * s).tolist()
            ry, rx = (4.0 + 20.0 * torch.rand(2, generator=gen)).tolist()
            blobs.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0)
        return blobs

    def _soften(self, region: torch.Tensor, wobble: torch.Tensor | None) -> torch.Tensor:
        """Mask probability (288, 288) for a boolean region: exact, or blurred and wobbled."""
        x = region.float()
        noise = self.config.mask_noise
        if wobble is None or noise <= 0:
            return x
        sigma = 0.5 + 4.0 * noise
        # blur only around the region's bounding box (the rest stays 0)
        ys, xs = torch.nonzero(region.any(1)).flatten(), torch.nonzero(region.any(0)).flatten()
        pad = math.ceil(2.5 * sigma) + 1
        y0, y1 = max(0, int(ys[0]) - pad), min(MASK_GRID, int(ys[-1]) + 1 + pad)
        x0, x1 = max(0, int(xs[0]) - pad), min(MASK_GRID, int(xs[-1]) + 1 + pad)
        crop = x[y0:y1, x0:x1]
        if min(crop.shape) > math.ceil(2.5 * sigma):  # reflect padding needs room
            crop = blur_map(crop[None], sigma)[0]
        edge = 4.0 * crop * (1.0 - crop)  # 1 on the 0.5 contour, 0 inside and far outside
        out = torch.zeros_like(x)
        out[y0:y1, x0:x1] = (crop + noise * wobble[y0:y1, x0:x1] * edge).clamp_(0.0, 1.0)
        return out
