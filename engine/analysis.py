"""The analysis of one batch: DATR scopes -> one batched PCA/KMeans problem -> metric rows.

Everything stays on the batch's device until the final metric columns are copied to the
host once. Per image the problem axis holds the encoder tokens once and one DATR token
set per (tau, alpha, scope); scopes are `global` (one softmax over all prompts' kept
queries) and one per prompt. PCA is fitted once at the largest d of the grid and its
leading columns serve every smaller d (they are the same eigenvectors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.config import AnalysisConfig
from engine.source import SourceBatch
from kernels.backends import ClusterBackend
from kernels.datr import attend_queries, compact_kept, mask_weights
from kernels.metrics import (
    align_to_reference,
    ari_from_contingency,
    calinski_harabasz,
    contingency,
    datr_cosine_distances,
    davies_bouldin,
    flip_ratio,
    majority_filter,
    mask_iou,
    masked_mean,
    matched_accuracy,
    nmi_from_contingency,
    silhouette_sampled,
)
from kernels.pca import pca_transform

ENCODER = "encoder"
GLOBAL = "global"


@dataclass
class Slot:
    """What one entry of the per-image problem axis is."""

    scope: str
    kind: str  # "encoder" | "global" | "class"
    class_id: int | None
    tau: float | None
    alpha: float | None
    tau_index: int | None
    scope_index: int | None  # index into (global, prompt_0, ...)


@dataclass
class BatchMaps:
    """Label maps of the first grid point (d, k), for figures. Shapes use M slots, S scopes."""

    slots: list[Slot]
    image_ids: list[str]  # (B,)
    d: int
    k: int
    labels: torch.Tensor  # (B, M, H, W) aligned to the encoder labels (slot 0 = encoder)
    labels_processed: torch.Tensor  # (B, M, H, W) after the 3x3 filter, aligned on filtered maps
    effective: torch.Tensor  # (B, M, H, W) bool
    mask_weights: torch.Tensor  # (B, T, S, H, W)
    encoder_pca: torch.Tensor  # (B, H, W, 3) first three PCA coordinates of the encoder tokens
    gt_tokens: torch.Tensor | None  # (B, H, W)
    kept: torch.Tensor  # (B, P, Q) bool, queries kept at the first tau
    scores: torch.Tensor  # (B, P, Q)
    query_masks: torch.Tensor  # (B, P, Q, H, W) float16 decoder mask probability pooled to the token grid
    encoder_similarity: torch.Tensor | None  # (B, P, Q, H, W) float16 cos(F_j, mask prototype); 0 if not kept


@dataclass
class BatchResult:
    columns: dict[str, list]  # one entry per row (image x slot x (d, k))
    maps: BatchMaps | None


def build_slots(cfg: AnalysisConfig, prompts: tuple[str, ...], class_ids: tuple[int, ...]) -> list[Slot]:
    slots = [Slot(ENCODER, "encoder", None, None, None, None, None)]
    scopes = [(GLOBAL, "global", None)] + [(p, "class", c) for p, c in zip(prompts, class_ids, strict=True)]
    for ti, tau in enumerate(cfg.taus):
        for alpha in cfg.alphas:
            for si, (name, kind, cid) in enumerate(scopes):
                slots.append(Slot(name, kind, cid, tau, alpha, ti, si))
    return slots


def analyze_batch(
    batch: SourceBatch,
    cfg: AnalysisConfig,
    backend: ClusterBackend,
    prompts: tuple[str, ...],
    class_ids: tuple[int, ...],
    num_classes: int,
    gt_tokens: torch.Tensor | None = None,
    gt_mask: torch.Tensor | None = None,
    keep_maps: bool = False,
) -> BatchResult:
    """Run the whole analysis on one batch; gt_* are (B, 72, 72) / (B, 288, 288) or None."""
    feats = batch.features.float()
    b, c, h, w = feats.shape
    n = h * w
    p = len(prompts)
    assert batch.queries.shape[1] == p, f"queries carry {batch.queries.shape[1]} prompts, config has {p}"
    dev = feats.device
    tokens = feats.flatten(2).transpose(1, 2).contiguous()  # (B, N, C)
    queries = batch.queries.to(dev).float()
    q = queries.shape[2]
    slots = build_slots(cfg, prompts, class_ids)
    m = len(slots)
    s_count = p + 1
    t_count, a_count = len(cfg.taus), len(cfg.alphas)

    problems = torch.empty(b, m, n, c, dtype=tokens.dtype, device=dev)
    problems[:, 0] = tokens
    effective = torch.zeros(b, m, n, dtype=torch.bool, device=dev)
    kept_count = torch.zeros(b, m, dtype=torch.long, device=dev)
    cos_dist = torch.full((b, m), float("nan"), dtype=torch.float64, device=dev)
    shift = torch.full((b, m), float("nan"), dtype=torch.float64, device=dev)
    iou = torch.full((b, m), float("nan"), dtype=torch.float64, device=dev)
    weights_all = torch.zeros(b, t_count, s_count, n, device=dev)
    class_t = torch.tensor(class_ids, device=dev)

    for ti, tau in enumerate(cfg.taus):
        kept = batch.scores.to(dev) >= tau  # (B, P, Q)
        w_class = mask_weights(batch.query_masks.to(dev), kept)  # (B, P, N)
        weights = torch.cat([w_class.amax(1, keepdim=True), w_class], 1)  # (B, S, N)
        weights_all[:, ti] = weights
        eff = weights >= cfg.effective_threshold
        keys_c, mask_c = compact_kept(queries, kept)
        keys_g, mask_g = compact_kept(queries.reshape(b, 1, p * q, c), kept.reshape(b, 1, p * q))
        attended = torch.cat([attend_queries(tokens, keys_g, mask_g), attend_queries(tokens, keys_c, mask_c)], 1)
        counts = torch.cat([kept.sum((1, 2))[:, None], kept.sum(2)], 1)  # (B, S)
        paper_dist, shift_dist = datr_cosine_distances(tokens, attended, cfg.alphas)
        paper_cos = masked_mean(paper_dist, eff)  # (B, S)
        scope_iou = None
        if gt_mask is not None:
            union = batch.union_masks[:, ti].to(dev)
            scope_iou = torch.cat([torch.full((b, 1), float("nan"), dtype=torch.float64, device=dev),
                                   mask_iou(union, gt_mask.to(dev), class_t)], 1)
        for ai, alpha in enumerate(cfg.alphas):
            lo = 1 + (ti * a_count + ai) * s_count
            sl = slice(lo, lo + s_count)
            problems[:, sl] = tokens[:, None] + alpha * attended
            effective[:, sl] = eff
            kept_count[:, sl] = counts
            cos_dist[:, sl] = paper_cos
            shift[:, sl] = masked_mean(shift_dist[ai], eff)
            if scope_iou is not None:
                iou[:, sl] = scope_iou
        del attended

    flat = problems.reshape(b * m, n, c)
    fit = backend.pca_fit(flat, max(cfg.dims))
    projected = pca_transform(flat, fit)  # (B*M, N, dmax)
    del problems, flat

    gt_flat = valid = None
    if gt_tokens is not None:
        gt_flat = gt_tokens.to(dev).reshape(b, 1, n).expand(b, m, n).reshape(b * m, n).long()
        valid = gt_flat != 255

    columns: dict[str, list] = {}
    maps = None
    eff_flat = effective.reshape(b * m, n)
    for d in cfg.dims:
        z = projected[..., :d].contiguous()
        evr = fit.explained_variance_ratio[:, :d].sum(-1)
        for k in cfg.ks:
            km = backend.kmeans(z, k, n_init=cfg.n_init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed)
            labels = km.labels.reshape(b, m, n)
            enc = labels[:, :1].expand(b, m, n).reshape(b * m, n)
            lab = labels.reshape(b * m, n)
            aligned = align_to_reference(lab, enc, k)
            flips = flip_ratio(aligned, enc, eff_flat)
            filtered = majority_filter(lab.reshape(b * m, h, w), k).reshape(b * m, n)
            enc_f = filtered.reshape(b, m, n)[:, :1].expand(b, m, n).reshape(b * m, n)
            aligned_f = align_to_reference(filtered, enc_f, k)
            flips_p = flip_ratio(aligned_f, enc_f, eff_flat)
            metric = {
                "flip_ratio": flips, "flip_ratio_processed": flips_p,
                "inertia": km.inertia.double(), "n_iter": km.n_iter,
                "explained_variance_ratio": evr.double(),
            }
            if gt_flat is None:  # no ground truth: internal cluster-quality scores instead
                metric.update(silhouette=silhouette_sampled(z, lab, k, cfg.silhouette_sample, seed=cfg.seed),
                              calinski_harabasz=calinski_harabasz(z, lab, k), davies_bouldin=davies_bouldin(z, lab, k))
            else:
                table = contingency(lab, gt_flat, k, num_classes, valid)
                metric.update(accuracy=matched_accuracy(table), nmi=nmi_from_contingency(table), ari=ari_from_contingency(table))
            append_rows(columns, batch.image_ids, slots, d, k, metric, effective, kept_count, cos_dist, shift, iou)
            if keep_maps and maps is None:
                maps = BatchMaps(
                    slots=slots, image_ids=list(batch.image_ids), d=d, k=k,
                    labels=aligned.reshape(b, m, h, w).cpu(),
                    labels_processed=aligned_f.reshape(b, m, h, w).cpu(),
                    effective=effective.reshape(b, m, h, w).cpu(),
                    mask_weights=weights_all.reshape(b, t_count, s_count, h, w).cpu(),
                    encoder_pca=projected.reshape(b, m, n, -1)[:, 0, :, :3].reshape(b, h, w, -1).cpu(),
                    gt_tokens=None if gt_tokens is None else gt_tokens.cpu(),
                    kept=(batch.scores >= cfg.taus[0]).cpu(),
                    scores=batch.scores.cpu(),
                    query_masks=batch.query_masks.reshape(b, p, q, h, w).cpu(),
                    encoder_similarity=encoder_similarity(tokens, batch.query_masks.to(dev), batch.scores.to(dev) >= cfg.taus[0]).reshape(b, p, q, h, w).cpu(),
                )
    return BatchResult(columns=columns, maps=maps)


def encoder_similarity(tokens: torch.Tensor, query_masks: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """cos(F_j, prototype) per kept query, the prototype being the mask-weighted mean feature.

    tokens (B, N, C), query_masks (B, P, Q, ...) pooled probabilities, kept (B, P, Q)
    -> (B, P, Q, N) float16, zeros for queries not kept. Only drawn for figures.
    """
    b, n, c = tokens.shape
    weights = query_masks.reshape(b, -1, n).float() * kept.reshape(b, -1, 1)  # (B, P*Q, N)
    prototypes = weights @ tokens / weights.sum(-1, keepdim=True).clamp(min=1e-12)  # (B, P*Q, C)
    sim = torch.nn.functional.normalize(prototypes, dim=-1) @ torch.nn.functional.normalize(tokens, dim=-1).transpose(1, 2)
    sim = sim * kept.reshape(b, -1, 1)
    return sim.reshape(*kept.shape, n).half()


FLOAT_COLUMNS = ("flip_ratio", "flip_ratio_processed", "cos_distance", "datr_shift", "iou", "accuracy", "nmi", "ari",
                 "silhouette", "calinski_harabasz", "davies_bouldin", "inertia", "explained_variance_ratio")


def append_rows(columns, image_ids, slots, d, k, metric, effective, kept_count, cos_dist, shift, iou) -> None:
    """Extend the column lists with one row per (image, slot) for this grid point.

    Every (B, M) value goes to the host in one copy (one synchronisation on a GPU);
    counts are exact in float64.
    """
    b, m = kept_count.shape
    per_slot = {**metric, "cos_distance": cos_dist, "datr_shift": shift, "iou": iou,
                "kept_queries": kept_count, "effective_tokens": effective.sum(-1)}
    missing = torch.full((b, m), float("nan"), dtype=torch.float64, device=kept_count.device)
    names = list(FLOAT_COLUMNS) + ["kept_queries", "effective_tokens", "n_iter"]
    host = torch.stack([per_slot[name].reshape(b, m).double() if name in per_slot else missing for name in names]).cpu().numpy()
    at = {name: host[i].reshape(-1) for i, name in enumerate(names)}  # row r = image r // M, slot r % M
    encoder = np.tile([slot.kind == "encoder" for slot in slots], b)

    def floats(values: np.ndarray) -> list:
        return [None if v != v else v for v in values.tolist()]  # NaN -> null

    def counts(values: np.ndarray) -> list:
        return [None if enc else int(v) for enc, v in zip(encoder, values.tolist(), strict=True)]

    block = {
        "image_id": np.repeat(np.asarray(image_ids, dtype=object), m).tolist(),
        "scope": [slot.scope for slot in slots] * b,
        "scope_kind": [slot.kind for slot in slots] * b,
        "class_id": [slot.class_id for slot in slots] * b,
        "tau": [slot.tau for slot in slots] * b,
        "alpha": [slot.alpha for slot in slots] * b,
        "d": [d] * (b * m),
        "k": [k] * (b * m),
        "kept_queries": counts(at["kept_queries"]),
        "effective_tokens": counts(at["effective_tokens"]),
        "n_tokens": [int(effective.shape[-1])] * (b * m),
        "n_iter": at["n_iter"].astype(np.int64).tolist(),
        **{name: floats(at[name]) for name in FLOAT_COLUMNS},
    }
    for key, values in block.items():
        columns.setdefault(key, []).extend(values)
