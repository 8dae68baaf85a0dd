"""The analysis of one batch: DATR scopes -> batched PCA/KMeans problems -> metric rows.

Everything stays on the batch's device until the final metric columns are copied to the
host once per grid point. Which problem is which is engine.analysis.layout's: per image the
encoder tokens and one DATR token set per (tau, alpha, scope) -- `global` (one softmax over all
prompts' kept queries) and one per prompt -- with their null controls, analysed one tau at a
time (a part) so that only one tau's attended vectors and projections are held. PCA is fitted
once at the largest d of the grid and its leading columns serve every smaller d.

    analyze_batch
      per part (tau):  build_part       the part's DATR token sets as factors (F, A, alpha) and the
                                        per-slot measures (effective tokens, cosine measures, IoU)
                       fit_and_project  PCA (largest d) from the factors' moments, projection
                       per (d, k):      KMeans with the seed ensemble (engine.analysis.controls),
                                        score_clustering, the controls and the ensemble measures
      then the rows of every grid point (engine.analysis.rows), and figure_maps on request
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.analysis import controls
from engine.analysis.controls import EncoderClustering
from engine.analysis.ensemble import ensemble_measures
from engine.analysis.layout import Part, PartIndex, ProblemLayout, Slot
from engine.analysis.rows import ENSEMBLE_COLUMNS, append_rows
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

    @classmethod
    def empty(cls, b: int, m: int, taus: int, scopes: int, n: int, device: torch.device) -> ScopeMeasures:
        nan = torch.full((b, m), float("nan"), dtype=torch.float64, device=device)
        return cls(effective=torch.zeros(b, m, n, dtype=torch.bool, device=device),
                   kept_count=torch.zeros(b, m, dtype=torch.long, device=device), cos_distance=nan.clone(),
                   shift=nan.clone(), iou=nan.clone(), mask_weights=torch.zeros(b, taus, scopes, n, device=device))


@dataclass
class BatchInputs:
    """What every part of a batch reads: tokens (B, N, C), the source batch, GT and the grid side."""

    tokens: torch.Tensor
    batch: SourceBatch
    gt_tokens: torch.Tensor | None  # (B, N) long, 255 = ignore
    gt_mask: torch.Tensor | None  # (B, 288, 288)
    class_ids: torch.Tensor  # (P,)
    grid: tuple[int, int]
    num_classes: int


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
    assert batch.queries.shape[1] == len(prompts), f"queries carry {batch.queries.shape[1]} prompts, config has {len(prompts)}"
    inputs = batch_inputs(batch, class_ids, num_classes, gt_tokens, gt_mask)
    (h, w), dev = inputs.grid, inputs.tokens.device
    layout = ProblemLayout.build(cfg, prompts, class_ids)
    state = BatchState(layout, cfg, ScopeMeasures.empty(len(batch.image_ids), layout.m, len(cfg.taus), len(layout.scopes),
                                                        h * w, dev), keep_maps)
    measures = state.measures
    for part in layout.parts():
        analyze_part(inputs, part, state, cfg, backend)
    columns: dict[str, list] = {}
    for (d, k), per_slot in state.points.items():
        per_slot.update({"cos_distance": measures.cos_distance, "datr_shift": measures.shift, "iou": measures.iou,
                         "kept_queries": measures.kept_count, "effective_tokens": measures.effective.sum(-1)})
        append_rows(columns, batch.image_ids, list(layout.slots), d, k, per_slot, h * w, cfg.kmeans_init)
    maps = None
    if keep_maps:
        d, k = cfg.dims[0], cfg.ks[0]
        maps = figure_maps(inputs, list(layout.slots), d, k, state.maps, measures, cfg.taus[0])
    return BatchResult(columns=columns, maps=maps)


def batch_inputs(batch: SourceBatch, class_ids: tuple[int, ...], num_classes: int, gt_tokens: torch.Tensor | None,
                 gt_mask: torch.Tensor | None) -> BatchInputs:
    """The batch's tokens (B, N, C) and GT on the features' device."""
    feats = batch.features.float()
    b, _, h, w = feats.shape
    dev = feats.device
    return BatchInputs(tokens=feats.flatten(2).transpose(1, 2).contiguous(), batch=batch,
                       gt_tokens=None if gt_tokens is None else gt_tokens.to(dev).reshape(b, h * w).long(),
                       gt_mask=None if gt_mask is None else gt_mask.to(dev), class_ids=torch.tensor(class_ids, device=dev),
                       grid=(h, w), num_classes=num_classes)


class BatchState:
    """What the parts of one batch fill in: per grid point the (B, M) columns and the encoder clustering
    (clustered in part 0, the reference of every later part), and the first grid point's maps."""

    def __init__(self, layout: ProblemLayout, cfg: AnalysisConfig, measures: ScopeMeasures, keep_maps: bool):
        self.layout, self.measures = layout, measures
        self.points: dict[tuple[int, int], dict[str, torch.Tensor]] = {(d, k): {} for d in cfg.dims for k in cfg.ks}
        self.encoders: dict[tuple[int, int], EncoderClustering] = {}
        self.maps: dict[str, torch.Tensor] | None = {} if keep_maps else None

    def column(self, point: tuple[int, int], name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The (B, M) column `name` of a grid point, created NaN (or 0) on first use."""
        cols = self.points[point]
        if name not in cols:
            b = self.measures.effective.shape[0]
            fill = float("nan") if dtype.is_floating_point else 0
            cols[name] = torch.full((b, self.layout.m), fill, dtype=dtype, device=device)
        return cols[name]

    def put(self, point: tuple[int, int], slot_ids: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Write (B, J) values into the slots slot_ids (J,) of every named column."""
        for name, value in values.items():
            self.column(point, name, value.dtype, value.device)[:, slot_ids] = value


def analyze_part(inputs: BatchInputs, part: Part, state: BatchState, cfg: AnalysisConfig, backend: ClusterBackend) -> None:
    """One tau's problems: build, PCA, then KMeans and every score at each (d, k) of the grid."""
    b, n, _ = inputs.tokens.shape
    factors = build_part(inputs, part, state, cfg)
    fit, projected = fit_and_project(factors, backend, max(cfg.dims))
    del factors
    kept = part.kept_factor_slots()
    per = part.per_image
    projected = projected.reshape(b, part.factor_slots, n, -1)[:, kept].reshape(b * per, n, -1)
    explained_all = fit.explained_variance_ratio.reshape(b, part.factor_slots, -1)[:, kept].reshape(b * per, -1)
    index = part.index(b, projected.device)
    scored = torch.cat([index.encoder[:, None], index.real], 1) if part.has_encoder else index.real  # (B, J')
    slot_ids = part.scored_slots(projected.device)
    for d in cfg.dims:
        z = projected[..., :d].contiguous()
        explained = explained_all[scored, :d].sum(-1).double()
        for k in cfg.ks:
            point = (d, k)
            clustering = cluster_point(z, index, part, state, point, k, inputs.grid, cfg, backend)
            values = score_part(z, clustering, index, scored, slot_ids, inputs, state, point, k, cfg)
            values.update(inertia=clustering.inertia[scored].double(), n_iter=clustering.n_iter[scored],
                          explained_variance_ratio=explained)
            state.put(point, slot_ids, values)
    if state.maps is not None and part.has_encoder:
        state.maps["encoder_pca"] = projected[index.encoder][..., :3].reshape(b, *inputs.grid, 3)


def cluster_point(z: torch.Tensor, index: PartIndex, part: Part, state: BatchState, point: tuple[int, int], k: int,
                  grid: tuple[int, int], cfg: AnalysisConfig, backend: ClusterBackend) -> controls.PartClustering:
    """KMeans of the part's problems at one grid point; part 0 also keeps the encoder clustering."""
    encoder = state.encoders.get(point)
    if part.has_encoder and cfg.kmeans_init == "encoder":
        encoder = controls.encoder_fixed_points(z[index.encoder], k, cfg, backend)
    clustering = controls.cluster_part(z, index, encoder, k, cfg, backend)
    if part.has_encoder:
        labels = clustering.labels[index.encoder]
        reseed = None
        if cfg.controls and cfg.kmeans_init == "independent":
            reseed = controls.reseed_labels(z[index.encoder], labels, k, cfg, backend)
        members = None if clustering.members is None else clustering.members[index.encoder]
        filtered = majority_filter(labels.reshape(-1, *grid), k).reshape(labels.shape)  # once per grid point
        state.encoders[point] = EncoderClustering(labels=labels, filtered=filtered, members=members, reseed=reseed)
    return clustering


def score_part(z: torch.Tensor, clustering: controls.PartClustering, index: PartIndex, scored: torch.Tensor,
               slot_ids: torch.Tensor, inputs: BatchInputs, state: BatchState, point: tuple[int, int], k: int,
               cfg: AnalysisConfig) -> dict[str, torch.Tensor]:
    """Every (B, J') column of the part's scored slots (the encoder slot in part 0, then the DATR slots)."""
    b, j = scored.shape
    n = z.shape[1]
    encoder = state.encoders[point]
    effective = state.measures.effective[:, slot_ids]  # (B, J', N)
    labels = clustering.labels[scored]  # (B, J', N)
    reference = encoder.labels[:, None].expand(b, j, n).reshape(b * j, n)
    reference_f = encoder.filtered[:, None].expand(b, j, n).reshape(b * j, n)
    gt = None if inputs.gt_tokens is None else inputs.gt_tokens[:, None].expand(b, j, n).reshape(b * j, n)
    metric, aligned, aligned_f = score_clustering(z[scored.reshape(-1)], labels.reshape(b * j, n), (reference, reference_f),
                                                  k, inputs.grid, effective.reshape(b * j, n), gt, inputs.num_classes, cfg)
    values = {name: value.reshape(b, j) for name, value in metric.items()}
    datr = slice(1, None) if index.encoder is not None else slice(None)
    datr_eff = effective[:, datr]
    if cfg.controls:
        for name, value in controls.control_columns(clustering.labels[index.null], encoder, datr_eff, k, inputs.grid).items():
            values[name] = pad_encoder(value, index)
    if cfg.seeds:
        ensemble = ensemble_measures(encoder.members, clustering.members[index.real],
                                     None if index.null is None else clustering.members[index.null], datr_eff, k,
                                     paired=cfg.kmeans_init == "encoder")
        values.update({name: pad_encoder(getattr(ensemble, name), index) for name in ENSEMBLE_COLUMNS})
    if state.maps is not None and point == next(iter(state.points)):
        keep_maps_of_part(state, slot_ids, aligned.reshape(b, j, n), aligned_f.reshape(b, j, n))
    return values


def pad_encoder(value: torch.Tensor, index: PartIndex) -> torch.Tensor:
    """A DATR-slot column (B, J) with a NaN encoder slot in front when the part holds the encoder."""
    if index.encoder is None:
        return value
    return torch.cat([torch.full_like(value[:, :1], float("nan")), value], 1)


def keep_maps_of_part(state: BatchState, slot_ids: torch.Tensor, aligned: torch.Tensor, aligned_f: torch.Tensor) -> None:
    """The first grid point's aligned label maps of the part's slots, into the (B, M, N) figure maps."""
    b, _, n = aligned.shape
    for key, value in (("labels", aligned), ("labels_processed", aligned_f)):
        if key not in state.maps:
            state.maps[key] = torch.zeros(b, state.layout.m, n, dtype=value.dtype, device=value.device)
        state.maps[key][:, slot_ids] = value


def build_part(inputs: BatchInputs, part: Part, state: BatchState, cfg: AnalysisConfig) -> DatrFactors:
    """The part's problems as factors -- F at factor slot 0, then DATR_s(F) = F + alpha A_s for each of
    the tau's (alpha, scope) slots, A_s held once per scope and shared by every alpha, then (with
    controls) the null of each slot: the same alpha on A_s with its token rows permuted -- and the
    part's per-slot measures, written into state.measures."""
    tokens, batch = inputs.tokens, inputs.batch
    b, n, c = tokens.shape
    dev = tokens.device
    queries = batch.queries.to(dev).float()
    p, q = queries.shape[1:3]
    kept = batch.scores.to(dev) >= part.tau  # (B, P, Q)
    width_c, width_g = kept_widths(kept)  # the one host read per tau: the compacted widths
    w_class = mask_weights(batch.query_masks.to(dev), kept, width_c)  # (B, P, N)
    weights = torch.cat([w_class.amax(1, keepdim=True), w_class], 1)  # (B, S, N): global, then each prompt
    keys_c, mask_c = compact_kept(queries, kept, width_c)
    keys_g, mask_g = compact_kept(queries.reshape(b, 1, p * q, c), kept.reshape(b, 1, p * q), width_g)
    s_count = p + 1
    groups = torch.empty(b, s_count * (2 if part.controls else 1), n, c, dtype=tokens.dtype, device=dev)
    groups[:, :1] = attend_queries(tokens, keys_g, mask_g)
    groups[:, 1:s_count] = attend_queries(tokens, keys_c, mask_c)
    attended = groups[:, :s_count]
    counts = torch.cat([kept.sum((1, 2))[:, None], kept.sum(2)], 1)  # (B, S)
    write_measures(inputs, part, state, cfg, weights, attended, counts)
    if part.controls:
        perm = controls.null_permutations(cfg.seed, list(batch.image_ids), state.layout.scopes, part.tau, n, dev)
        groups[:, s_count:] = permute_token_rows(attended, perm)
    return DatrFactors(tokens, groups, list(part.slot_group), list(part.slot_alpha))


def write_measures(inputs: BatchInputs, part: Part, state: BatchState, cfg: AnalysisConfig, weights: torch.Tensor,
                   attended: torch.Tensor, counts: torch.Tensor) -> None:
    """Effective tokens, kept counts, both cosine measures and IoU of the part's slots (per alpha)."""
    tokens, measures = inputs.tokens, state.measures
    b = tokens.shape[0]
    measures.mask_weights[:, part.tau_index] = weights
    eff = weights >= cfg.effective_threshold  # (B, S, N)
    paper_dist, shift_dist = datr_cosine_distances(tokens, attended, cfg.alphas)
    paper_cos = masked_mean(paper_dist, eff)  # (B, S)
    scope_iou = None
    if inputs.gt_mask is not None:
        union = inputs.batch.union_masks[:, part.tau_index].to(tokens.device)
        scope_iou = torch.cat([torch.full((b, 1), float("nan"), dtype=torch.float64, device=tokens.device),
                               mask_iou(union, inputs.gt_mask, inputs.class_ids)], 1)
    s_count = eff.shape[1]
    for ai, _alpha in enumerate(cfg.alphas):  # the part's slots are alpha-major, then scope, and consecutive
        first = part.slots[ai * s_count]
        sl = slice(first, first + s_count)  # a slice, not a list: no index tensor to copy to the device
        measures.effective[:, sl] = eff
        measures.kept_count[:, sl] = counts
        measures.cos_distance[:, sl] = paper_cos
        measures.shift[:, sl] = masked_mean(shift_dist[ai], eff)
        if scope_iou is not None:
            measures.iou[:, sl] = scope_iou


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


def score_clustering(z: torch.Tensor, labels: torch.Tensor, references: tuple[torch.Tensor, torch.Tensor], k: int,
                     grid: tuple[int, int],
                     effective: torch.Tensor, gt_flat: torch.Tensor | None, num_classes: int,
                     cfg: AnalysisConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Flip ratios (raw and processed) and the quality scores of one grid point's labels.

    z (Q, N, d) the projected tokens, labels (Q, N); references = (the encoder labels of each
    problem's image, the same 3x3-filtered), each (Q, N); effective (Q, N), gt_flat (Q, N) or None;
    grid = (H, W). Returns the (Q,)
    metrics and the labels aligned to the reference, raw and 3x3-filtered (each (Q, N)).
    """
    h, w = grid
    q, n = labels.shape
    reference, reference_f = references
    aligned = align_to_reference(labels, reference, k)
    filtered = majority_filter(labels.reshape(q, h, w), k).reshape(q, n)
    aligned_f = align_to_reference(filtered, reference_f, k)
    metric = {"flip_ratio": flip_ratio(aligned, reference, effective),
              "flip_ratio_processed": flip_ratio(aligned_f, reference_f, effective)}
    if gt_flat is None:  # no ground truth: internal cluster-quality scores instead
        metric.update(silhouette=silhouette_sampled(z, labels, k, cfg.silhouette_sample, seed=cfg.seed),
                      calinski_harabasz=calinski_harabasz(z, labels, k), davies_bouldin=davies_bouldin(z, labels, k))
    else:
        table = contingency(labels, gt_flat, k, num_classes, gt_flat != IGNORE)
        metric.update(accuracy=matched_accuracy(table), nmi=nmi_from_contingency(table), ari=ari_from_contingency(table))
    return metric, aligned, aligned_f


def figure_maps(inputs: BatchInputs, slots: list[Slot], d: int, k: int, maps: dict[str, torch.Tensor],
                scopes: ScopeMeasures, tau: float) -> BatchMaps:
    """One grid point's label maps and the decoder outputs the figures draw, on the host."""
    batch, tokens = inputs.batch, inputs.tokens
    b, m, n = maps["labels"].shape
    h, w = inputs.grid
    p, q = batch.scores.shape[1:]
    dev = tokens.device
    kept = batch.scores.to(dev) >= tau
    similarity = encoder_similarity(tokens, batch.query_masks.to(dev), kept)
    return BatchMaps(
        slots=slots, image_ids=list(batch.image_ids), d=d, k=k,
        labels=maps["labels"].reshape(b, m, h, w).cpu(),
        labels_processed=maps["labels_processed"].reshape(b, m, h, w).cpu(),
        effective=scopes.effective.reshape(b, m, h, w).cpu(),
        mask_weights=scopes.mask_weights.reshape(b, *scopes.mask_weights.shape[1:3], h, w).cpu(),
        encoder_pca=maps["encoder_pca"].cpu(),
        gt_tokens=None if inputs.gt_tokens is None else inputs.gt_tokens.reshape(b, h, w).cpu(),
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
