"""The analysis of one batch: DATR scopes -> one batched PCA/KMeans problem -> metric rows.

Everything stays on the batch's device until the final metric columns are copied to the
host once. Per image the problem axis holds the encoder tokens once and one DATR token
set per (tau, alpha, scope); scopes are `global` (one softmax over all prompts' kept
queries) and one per prompt. PCA is fitted once at the largest d of the grid and its
leading columns serve every smaller d (they are the same eigenvectors).

    analyze_batch
      build_problems      every slot's DATR token set as factors (F, A, alpha), effective tokens,
                          cosine measures, IoU
      fit_and_project     PCA (largest d) from the factors' moments, projection from the factors
      then per (d, k): KMeans (engine.analysis.controls.cluster_grid_point, with the null and
      reseed controls) and score_clustering (flips, GT or internal scores)
      figure_maps         the first grid point's label maps, for the figures (on request)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.analysis import controls
from engine.analysis.rows import append_rows
from engine.core.config import AnalysisConfig
from engine.sources.base import SourceBatch
from kernels.backends import ClusterBackend
from kernels.datr import (
    DatrFactors,
    attend_queries,
    compact_kept,
    datr_moments,
    datr_project,
    kept_widths,
    mask_weights,
    permute_token_rows,
)
from kernels.grid import IGNORE
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
from kernels.pca import PCAResult, pca_transform

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


@dataclass
class ScopeMeasures:
    """Per (image, slot) facts that do not depend on the clustering; M slots, S scopes, T taus.

    effective (B, M, N) bool; kept_count (B, M); cos_distance, shift, iou (B, M) float64
    (NaN where undefined: the encoder slot, an empty effective set, no GT);
    mask_weights (B, T, S, N).
    """

    effective: torch.Tensor
    kept_count: torch.Tensor
    cos_distance: torch.Tensor
    shift: torch.Tensor
    iou: torch.Tensor
    mask_weights: torch.Tensor


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
    assert batch.queries.shape[1] == len(prompts), f"queries carry {batch.queries.shape[1]} prompts, config has {len(prompts)}"
    dev = feats.device
    tokens = feats.flatten(2).transpose(1, 2).contiguous()  # (B, N, C)
    slots = build_slots(cfg, prompts, class_ids)
    m = len(slots)

    scope_names = [slot.scope for slot in slots[1 : 2 + len(prompts)]]  # global, then each prompt
    factors, scopes = build_problems(tokens, batch, cfg, len(slots), class_ids, gt_mask, scope_names)
    fit, projected = fit_and_project(factors, backend, max(cfg.dims))
    del factors
    # (P, N, dmax) in the controls' layout: the B*M real problems, then the null controls
    projected, explained_all = (controls.real_then_null(t, b, m) for t in (projected, fit.explained_variance_ratio))

    gt_flat = None
    if gt_tokens is not None:  # every slot of an image is scored against the same GT
        gt_flat = gt_tokens.to(dev).reshape(b, 1, n).expand(b, m, n).reshape(b * m, n).long()

    columns: dict[str, list] = {}
    maps = None
    effective = scopes.effective.reshape(b * m, n)
    per_scope = {"cos_distance": scopes.cos_distance, "datr_shift": scopes.shift, "iou": scopes.iou,
                 "kept_queries": scopes.kept_count, "effective_tokens": scopes.effective.sum(-1)}  # (B, M) each
    for d in cfg.dims:
        z = projected[..., :d].contiguous()
        explained = explained_all[: b * m, :d].sum(-1).double()
        for k in cfg.ks:
            km = controls.cluster_grid_point(z, b, m, k, cfg, backend)
            labels = km.labels[: b * m]
            metric, aligned, aligned_processed = score_clustering(z[: b * m], labels, k, (b, m, h, w), effective,
                                                                  gt_flat, num_classes, cfg)
            if cfg.controls:
                metric.update(controls.control_columns(km, (b, m, h, w), k, effective))
            per_slot = {**metric, **per_scope, "inertia": km.inertia[: b * m].double(), "n_iter": km.n_iter[: b * m],
                        "explained_variance_ratio": explained}
            append_rows(columns, batch.image_ids, slots, d, k, per_slot, n, cfg.kmeans_init)
            if keep_maps and maps is None:
                encoder_pca = projected[: b * m].reshape(b, m, n, -1)[:, 0, :, :3].reshape(b, h, w, -1)
                maps = figure_maps(batch, tokens, slots, d, k, aligned.reshape(b, m, h, w),
                                   aligned_processed.reshape(b, m, h, w), scopes, encoder_pca, gt_tokens, cfg.taus[0])
    return BatchResult(columns=columns, maps=maps)


def build_problems(tokens: torch.Tensor, batch: SourceBatch, cfg: AnalysisConfig, m: int, class_ids: tuple[int, ...],
                   gt_mask: torch.Tensor | None, scope_names: list[str]) -> tuple[DatrFactors, ScopeMeasures]:
    """The problems as factors -- encoder tokens at slot 0, then DATR_s(F) = F + alpha A_s per
    (tau, alpha, scope), in build_slots' order, A_s held once per (tau, scope) -- and the per-slot
    measures. Attention runs once per tau, for every alpha.

    With controls, M - 1 more slots follow per image: the null control of every DATR slot, the
    same alpha on A_s with its token rows permuted (one permutation per (image, scope, tau),
    shared by every alpha; engine.analysis.controls), held as groups after the real ones."""
    b, n, c = tokens.shape
    dev = tokens.device
    queries = batch.queries.to(dev).float()
    p, q = queries.shape[1:3]
    s_count = p + 1
    a_count = len(cfg.alphas)
    attended_all, nulls_all = [], []  # (B, S, N, C) per tau
    slot_group, slot_alpha = [], []
    nan = torch.full((b, m), float("nan"), dtype=torch.float64, device=dev)
    measures = ScopeMeasures(effective=torch.zeros(b, m, n, dtype=torch.bool, device=dev),
                             kept_count=torch.zeros(b, m, dtype=torch.long, device=dev), cos_distance=nan.clone(),
                             shift=nan.clone(), iou=nan.clone(),
                             mask_weights=torch.zeros(b, len(cfg.taus), s_count, n, device=dev))
    class_t = torch.tensor(class_ids, device=dev)

    for ti, tau in enumerate(cfg.taus):
        kept = batch.scores.to(dev) >= tau  # (B, P, Q)
        width_c, width_g = kept_widths(kept)  # the one host read per tau: the compacted widths
        w_class = mask_weights(batch.query_masks.to(dev), kept, width_c)  # (B, P, N)
        weights = torch.cat([w_class.amax(1, keepdim=True), w_class], 1)  # (B, S, N): global, then each prompt
        measures.mask_weights[:, ti] = weights
        eff = weights >= cfg.effective_threshold
        keys_c, mask_c = compact_kept(queries, kept, width_c)
        keys_g, mask_g = compact_kept(queries.reshape(b, 1, p * q, c), kept.reshape(b, 1, p * q), width_g)
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
            slot_group += range(ti * s_count, (ti + 1) * s_count)
            slot_alpha += [alpha] * s_count
            measures.effective[:, sl] = eff
            measures.kept_count[:, sl] = counts
            measures.cos_distance[:, sl] = paper_cos
            measures.shift[:, sl] = masked_mean(shift_dist[ai], eff)
            if scope_iou is not None:
                measures.iou[:, sl] = scope_iou
        attended_all.append(attended)
        if cfg.controls:
            perm = controls.null_permutations(cfg.seed, list(batch.image_ids), scope_names, tau, n)
            nulls_all.append(permute_token_rows(attended, perm))
    groups = len(cfg.taus) * s_count  # the real (tau, scope) groups; the null copies follow them
    if cfg.controls:  # null slot j mirrors DATR slot j, on the permuted copy of its group
        slot_group, slot_alpha = slot_group + [g + groups for g in slot_group], slot_alpha + slot_alpha
    factors = DatrFactors(tokens, torch.cat(attended_all + nulls_all, 1), slot_group, slot_alpha)
    assert factors.slots == (2 * m - 1 if cfg.controls else m), f"{factors.slots} slots built for {m}"
    return factors, measures


def fit_and_project(factors: DatrFactors, backend: ClusterBackend, n_components: int,
                    materialise: bool = False) -> tuple[PCAResult, torch.Tensor]:
    """PCA of every slot and the projected tokens (B*M, N, d). The torch backend fits from the
    factors' moments; a library backend (sklearn, faiss, cuml), or materialise=True (the
    reference the tests compare with), fits on the token sets built in full."""
    b, n, c = factors.tokens.shape
    if materialise or not hasattr(backend, "pca_from_moments"):
        flat = factors.materialise().reshape(b * factors.slots, n, c)
        fit = backend.pca_fit(flat, n_components)
        if materialise:
            return fit, pca_transform(flat, fit)
        del flat
    else:
        fit = backend.pca_from_moments(*datr_moments(factors), n_components)
    return fit, datr_project(factors, fit.mean, fit.components)


def score_clustering(z: torch.Tensor, labels: torch.Tensor, k: int, shape: tuple[int, int, int, int],
                     effective: torch.Tensor, gt_flat: torch.Tensor | None, num_classes: int,
                     cfg: AnalysisConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Flip ratios (raw and processed) and the quality scores of one grid point's labels.

    z (B*M, N, d) the projected tokens, labels (B*M, N), effective (B*M, N), gt_flat (B*M, N)
    or None; shape = (B, M, H, W). Returns the (B*M,) metrics and the labels aligned to the
    encoder clustering, raw and 3x3-filtered (each (B*M, N)).
    """
    b, m, h, w = shape
    n = h * w
    encoder = labels.reshape(b, m, n)[:, :1].expand(b, m, n).reshape(b * m, n)
    aligned = align_to_reference(labels, encoder, k)
    filtered = majority_filter(labels.reshape(b * m, h, w), k).reshape(b * m, n)
    encoder_f = filtered.reshape(b, m, n)[:, :1].expand(b, m, n).reshape(b * m, n)
    aligned_f = align_to_reference(filtered, encoder_f, k)
    metric = {"flip_ratio": flip_ratio(aligned, encoder, effective),
              "flip_ratio_processed": flip_ratio(aligned_f, encoder_f, effective)}
    if gt_flat is None:  # no ground truth: internal cluster-quality scores instead
        metric.update(silhouette=silhouette_sampled(z, labels, k, cfg.silhouette_sample, seed=cfg.seed),
                      calinski_harabasz=calinski_harabasz(z, labels, k), davies_bouldin=davies_bouldin(z, labels, k))
    else:
        table = contingency(labels, gt_flat, k, num_classes, gt_flat != IGNORE)
        metric.update(accuracy=matched_accuracy(table), nmi=nmi_from_contingency(table), ari=ari_from_contingency(table))
    return metric, aligned, aligned_f


def figure_maps(batch: SourceBatch, tokens: torch.Tensor, slots: list[Slot], d: int, k: int, labels: torch.Tensor,
                labels_processed: torch.Tensor, scopes: ScopeMeasures, encoder_pca: torch.Tensor,
                gt_tokens: torch.Tensor | None, tau: float) -> BatchMaps:
    """One grid point's label maps and the decoder outputs the figures draw, on the host."""
    b, m, h, w = labels.shape
    p, q = batch.scores.shape[1:]
    dev = tokens.device
    kept = batch.scores.to(dev) >= tau
    similarity = encoder_similarity(tokens, batch.query_masks.to(dev), kept)
    return BatchMaps(
        slots=slots, image_ids=list(batch.image_ids), d=d, k=k,
        labels=labels.cpu(),
        labels_processed=labels_processed.cpu(),
        effective=scopes.effective.reshape(b, m, h, w).cpu(),
        mask_weights=scopes.mask_weights.reshape(b, *scopes.mask_weights.shape[1:3], h, w).cpu(),
        encoder_pca=encoder_pca.cpu(),
        gt_tokens=None if gt_tokens is None else gt_tokens.cpu(),
        kept=kept.cpu(),
        scores=batch.scores.cpu(),
        query_masks=batch.query_masks.reshape(b, p, q, h, w).cpu(),
        encoder_similarity=similarity.reshape(b, p, q, h, w).cpu(),
    )


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
