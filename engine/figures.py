"""The paper's per-image figures, drawn from what the sweep hands over (no analysis here).

`draw_image_figures(maps, row, result, cfg, out_dir)` writes one folder per image,
`out_dir/<image_id>/`, holding the figures below, `figures.json` (the manifest: file,
title, caption and the paper figure each one reproduces) and an `index.html` page.

    encoder_pca               Fig. 1   image | encoder features, PCA -> RGB
    structural_clustering     Fig. 2   encoder clustering, processed | raw (| GT)
    global_clustering         Fig. 3   global DATR clustering, processed | raw
    global_comparison         Fig. 4   image/GT | encoder | global DATR | changed tokens
    class-<p>_clustering      Fig. 5   per prompt: encoder | DATR_p clustering (processed)
    class-<p>_clustering_raw  Fig. 6   the same, raw
    class-<p>_comparison      Fig. 7   W_p | encoder in E_p | DATR_p in E_p | agreement
    class-<p>_flips           Fig. 8   DATR-induced cluster changes, raw | processed
    decoder_masks             Fig. 21  all kept decoder masks, per prompt
    mask-<p>-<r>              Fig. 22+ per kept mask: encoder similarity | decoder
                                       activation | comparison

Colours: the encoder clusters are matched to GT classes (display only, see
engine/palette.py), and every DATR map is already aligned to the encoder labels, so
one palette serves every figure of an image. Metrics in titles are read from the
sweep's rows (DIR/rows), never recomputed. Figures use the object-oriented matplotlib
API on an Agg canvas: no pyplot, no process-wide backend switch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.palette import (
    FLIP_COLOUR,
    SAME_COLOUR,
    ClusterPalette,
    class_colour,
    class_name,
    class_rgb,
    cluster_palette,
    to_unit,
)

FORMATS = ("png", "pdf", "svg")
STYLE = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "figure.titlesize": 10, "savefig.facecolor": "white", "figure.facecolor": "white",
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path", "axes.spines.top": False, "axes.spines.right": False,
}
EXTENT = (0.0, 1.0, 1.0, 0.0)  # every panel in unit coordinates, origin top-left (image convention)
PANEL_LETTERS = "abcdefghij"
DISPLAY_SIDE = 504  # backdrop pixels: 1008 / 2, more than a 3-inch panel shows at 150 dpi


@dataclass(frozen=True)
class FigureOptions:
    """What to draw: formats, resolution, which grid point, how many per-mask figures."""

    formats: tuple[str, ...] = ("png",)
    dpi: int = 150
    tau: float | None = None  # None: the first tau of the grid
    alpha: float | None = None  # None: the first alpha of the grid
    masks_per_prompt: int = 3  # per-mask figures for the top-scoring kept masks of each prompt
    panel_inches: float = 3.0
    only: tuple[str, ...] | None = None  # figure names to draw (e.g. ("structural_clustering",)); None: all

    def validate(self) -> FigureOptions:
        from engine.errors import ConfigError

        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ConfigError(f"--formats: choose from {', '.join(FORMATS)}, got {', '.join(self.formats) or 'nothing'}")
        if self.masks_per_prompt < 0:
            raise ConfigError(f"masks_per_prompt: need >= 0, got {self.masks_per_prompt}")
        return self


@dataclass
class ImageView:
    """One image's share of a batch's maps, on the host as numpy (what every figure reads)."""

    image_id: str
    slots: list  # engine.analysis.Slot, one per entry of the problem axis
    d: int
    k: int
    labels: np.ndarray  # (M, H, W) int, slot 0 = encoder, others aligned to it
    labels_processed: np.ndarray  # (M, H, W) int, 3x3-filtered, aligned on the filtered maps
    effective: np.ndarray  # (M, H, W) bool
    mask_weights: np.ndarray  # (T, S, H, W) float
    encoder_pca: np.ndarray  # (H, W, 3) float
    gt: np.ndarray | None  # (H, W) class ids, 255 = ignore
    image: np.ndarray | None  # (S', S', 3) uint8, the model's input box-downsampled for display (S' <= 504)
    scores: np.ndarray | None  # (P, Q)
    mask_probs: np.ndarray | None  # (P, Q, 288, 288) full-resolution mask probabilities, when the sweep kept them
    query_masks: np.ndarray | None  # (P, Q, H, W) the same pooled to the token grid (BatchMaps.query_masks)
    encoder_similarity: np.ndarray | None  # (P, Q, H, W) cos(F_j, mask prototype) (BatchMaps.encoder_similarity)
    similarity_kept: np.ndarray | None  # (P, Q) bool, queries the similarity was computed for (BatchMaps.kept)
    prompts: tuple[str, ...]
    class_ids: tuple[int, ...]
    metrics: dict = field(default_factory=dict)  # (scope, tau, alpha) -> row dict from DIR/rows

    def decoder_masks(self) -> np.ndarray | None:
        """(P, Q, h, w) mask probabilities: full resolution when kept, else pooled to the token grid."""
        return self.mask_probs if self.mask_probs is not None else self.query_masks

    def has_similarity(self, p: int, q: int) -> bool:
        if self.encoder_similarity is None:
            return False
        return self.similarity_kept is None or bool(self.similarity_kept[p, q])


@dataclass
class FigureRecord:
    name: str
    files: list[str]  # relative to the image folder, one per format
    title: str
    caption: str
    paper: str  # the paper figure it reproduces, e.g. "Fig. 5"


# ----------------------------------------------------------------------------------------------
# Entry point


def draw_image_figures(maps, row: int, result, cfg, out_dir: Path, options: FigureOptions | None = None) -> list[FigureRecord]:
    """Every per-image figure for entry `row` of `maps` (a BatchMaps) into out_dir/<image_id>/."""
    options = (options or FigureOptions()).validate()
    view = image_view(maps, row, result, cfg)
    folder = Path(out_dir) / safe_name(view.image_id)
    folder.mkdir(parents=True, exist_ok=True)
    records = draw_view(view, folder, options)
    write_manifest(folder, view, records, cfg)
    from engine.report import write_image_page

    write_image_page(folder)
    return records


def draw_view(view: ImageView, folder: Path, options: FigureOptions) -> list[FigureRecord]:
    import matplotlib

    tau, alpha = pick_point(view.slots, options)
    glob = find_slot(view.slots, "global", tau, alpha)
    palette = cluster_palette(view.labels[0], view.k, view.gt)
    plan = [("encoder_pca", lambda: fig_encoder_pca(view, folder, options)),
            ("structural_clustering", lambda: fig_structural(view, palette, folder, options))]
    if glob is not None:
        plan += [("global_clustering", lambda: fig_scope_clustering(view, palette, glob, folder, options, raw=None)),
                 ("global_comparison", lambda: fig_comparison(view, palette, glob, folder, options))]
    for prompt in view.prompts:
        j = find_slot(view.slots, prompt, tau, alpha)
        if j is None:
            continue
        stem = f"class-{safe_name(prompt)}"
        plan += [(f"{stem}_clustering", lambda j=j: fig_scope_clustering(view, palette, j, folder, options, raw=False)),
                 (f"{stem}_clustering_raw", lambda j=j: fig_scope_clustering(view, palette, j, folder, options, raw=True)),
                 (f"{stem}_comparison", lambda j=j: fig_comparison(view, palette, j, folder, options)),
                 (f"{stem}_flips", lambda j=j: fig_flips(view, palette, j, folder, options))]
    plan.append(("decoder_masks", lambda: fig_decoder_masks(view, folder, options, tau)))
    for p, prompt in enumerate(view.prompts):
        for rank, q in enumerate(top_masks(view, p, tau, options.masks_per_prompt)):
            plan.append((f"mask-{safe_name(prompt)}-{rank}", lambda p=p, q=q, rank=rank: fig_mask(view, p, q, rank, folder, options)))
    records = []
    with matplotlib.rc_context(STYLE):
        for name, draw in plan:
            if options.only is None or name in options.only:
                records.append(draw())
                assert records[-1].name == name, f"figure {name} saved as {records[-1].name}"
    return records


# ----------------------------------------------------------------------------------------------
# Gathering one image's inputs


def image_view(maps, row: int, result, cfg) -> ImageView:
    """Slice row `row` of a BatchMaps and the figure tensors of its image into numpy."""
    image_id = image_id_of(maps, row, result)
    image = result.images.get(image_id) if result is not None else None
    probs = result.mask_probs.get(image_id) if result is not None else None
    scores = maps.scores[row]
    similarity = maps.encoder_similarity
    query_masks = maps.query_masks
    kept = maps.kept
    prompts = tuple(cfg.prompts)
    class_ids = tuple(cfg.class_ids)
    view = ImageView(
        image_id=image_id, slots=list(maps.slots), d=int(maps.d), k=int(maps.k),
        labels=_np(maps.labels[row]).astype(np.int64),
        labels_processed=_np(maps.labels_processed[row]).astype(np.int64),
        effective=_np(maps.effective[row]).astype(bool),
        mask_weights=_np(maps.mask_weights[row]).astype(np.float32),
        encoder_pca=_np(maps.encoder_pca[row]).astype(np.float32),
        gt=None if maps.gt_tokens is None else _np(maps.gt_tokens[row]).astype(np.int64),
        image=None if image is None else display_image(_np(image).transpose(1, 2, 0)),
        scores=None if scores is None else _np(scores).astype(np.float32),
        mask_probs=None if probs is None else _np(probs),
        query_masks=None if query_masks is None else _np(query_masks[row]),
        encoder_similarity=None if similarity is None else _np(similarity[row]).astype(np.float32),
        similarity_kept=None if kept is None or similarity is None else _np(kept[row]).astype(bool),
        prompts=prompts, class_ids=class_ids,
    )
    m = view.labels.shape[0]
    assert len(view.slots) == m, f"BatchMaps has {len(view.slots)} slots but labels carry {m}: got {tuple(maps.labels.shape)}"
    view.metrics = read_image_metrics(Path(cfg.out), image_id, view.d, view.k)
    return view


def image_id_of(maps, row: int, result) -> str:
    """The image id of a BatchMaps row."""
    return str(maps.image_ids[row])


def read_image_metrics(out: Path, image_id: str, d: int, k: int) -> dict:
    """(scope, tau, alpha) -> row of DIR/rows for this image at grid point (d, k); {} without rows."""
    files = sorted((out / "rows").glob("part-*.parquet"))
    if not files:
        return {}
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset(files, format="parquet").to_table(
        filter=(pc.field("image_id") == image_id) & (pc.field("d") == d) & (pc.field("k") == k))
    return {(r["scope"], r["tau"], r["alpha"]): r for r in table.to_pylist()}


def _np(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float16 stays float16 (mask_probs is big)
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def display_image(image: np.ndarray, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """(S, S, 3) -> box-averaged by the smallest integer factor that brings it to <= max_side (display only)."""
    h, w = image.shape[:2]
    f = max(1, -(-max(h, w) // max_side))
    h2, w2 = h // f * f, w // f * f
    small = image[:h2, :w2].astype(np.float32).reshape(h2 // f, f, w2 // f, f, -1).mean((1, 3))
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"


def pick_point(slots, options: FigureOptions) -> tuple[float | None, float | None]:
    """(tau, alpha) of the figures: the requested ones, else the first of the grid."""
    datr = [s for s in slots if s.kind != "encoder"]
    if not datr:
        return None, None
    taus = list(dict.fromkeys(s.tau for s in datr))
    alphas = list(dict.fromkeys(s.alpha for s in datr))
    tau = taus[0] if options.tau is None else _grid_value(taus, options.tau, "tau")
    alpha = alphas[0] if options.alpha is None else _grid_value(alphas, options.alpha, "alpha")
    return tau, alpha


def _grid_value(values: list[float], wanted: float, name: str) -> float:
    for v in values:
        if abs(v - wanted) < 1e-9:
            return v
    from engine.errors import ConfigError

    raise ConfigError(f"figures: {name}={wanted} is not in the sweep's grid {values}")


def find_slot(slots, scope: str, tau, alpha) -> int | None:
    for j, s in enumerate(slots):
        if s.scope == scope and s.kind != "encoder" and s.tau == tau and s.alpha == alpha:
            return j
    return None


def top_masks(view: ImageView, p: int, tau, count: int) -> list[int]:
    """Query indices of prompt p's kept masks (score >= tau), best score first, at most count."""
    if view.scores is None or view.decoder_masks() is None or tau is None or count == 0:
        return []
    scores = view.scores[p]
    kept = np.flatnonzero(scores >= tau)
    return [int(q) for q in kept[np.argsort(-scores[kept], kind="stable")][:count]]


# ----------------------------------------------------------------------------------------------
# Panels


def new_figure(n_panels: int, options: FigureOptions, legend_rows: int = 0, ncols: int | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = ncols or n_panels
    nrows = -(-n_panels // ncols)
    size = options.panel_inches
    fig = Figure(figsize=(size * ncols, size * nrows + 0.35 + 0.22 * legend_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    return fig, list(axes[:n_panels])


def panel_title(ax, index: int, text: str) -> None:
    ax.set_title(f"({PANEL_LETTERS[index]}) {text}", loc="left")


def show_image(ax, image: np.ndarray | None, grey: bool = False) -> None:
    """The model's input as backdrop; greyed (and lightened) when colours are drawn on top."""
    if image is None:
        ax.imshow(np.full((2, 2, 3), 0.85), extent=EXTENT)
        return
    if grey:
        lum = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        ax.imshow(0.35 + 0.5 * lum / 255.0, cmap="gray", vmin=0, vmax=1, extent=EXTENT, interpolation="antialiased")
    else:
        ax.imshow(image, extent=EXTENT, interpolation="antialiased")


def show_labels(ax, labels: np.ndarray, palette: ClusterPalette, inside: np.ndarray | None = None, opacity: float = 1.0) -> None:
    """Cluster map with exact palette colours (nearest, no blending when opacity is 1)."""
    rgb = palette.rgb(labels)
    if inside is None and opacity >= 1.0:
        ax.imshow(rgb, extent=EXTENT, interpolation="nearest")
        return
    alpha = np.full(labels.shape, opacity, dtype=np.float32) if inside is None else np.where(inside, opacity, 0.0)
    ax.imshow(np.dstack([rgb / 255.0, alpha]), extent=EXTENT, interpolation="nearest")


def outline(ax, region: np.ndarray, colour: str = "white", width: float = 1.0) -> None:
    """Contour of a boolean token-grid region, drawn on the cell edges' midpoints."""
    if not region.any() or region.all():
        return
    h, w = region.shape
    xs = (np.arange(w) + 0.5) / w
    ys = (np.arange(h) + 0.5) / h
    ax.contour(xs, ys, region.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width)


def heatmap(fig, ax, values: np.ndarray, cmap: str, label: str, vmin: float | None = None, vmax: float | None = None,
            image: np.ndarray | None = None, opacity: float = 0.65):
    if image is not None:
        show_image(ax, image, grey=True)
    if image is not None:  # near-zero values left transparent so the image stays readable
        values = np.ma.masked_less(values, (vmin if vmin is not None else float(np.min(values))) + 0.02)
    handle = ax.imshow(values, extent=EXTENT, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                       alpha=opacity if image is not None else 1.0)
    fig.colorbar(handle, ax=ax, fraction=0.046, pad=0.02, label=label, shrink=0.85)
    return handle


def cluster_legend(fig, palette: ClusterPalette, shown: list[np.ndarray], extra: list[tuple[str, tuple]] | None = None) -> None:
    from matplotlib.patches import Patch

    present = sorted(set(np.unique(np.concatenate([s.ravel() for s in shown])).tolist())) if shown else []
    handles = [Patch(facecolor=to_unit(tuple(palette.colours[c])), edgecolor="0.3", label=palette.names[c]) for c in present]
    for label, colour in extra or []:
        handles.append(Patch(facecolor=to_unit(colour), edgecolor="0.3", label=label))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), frameon=False)


def class_legend(fig, class_ids: list[int], extra: list[tuple[str, tuple]] | None = None) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=to_unit(class_colour(c)), edgecolor="0.3", label=class_name(c)) for c in class_ids]
    for label, colour in extra or []:
        handles.append(Patch(facecolor=to_unit(colour), edgecolor="0.3", label=label))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)


def save(fig, folder: Path, stem: str, options: FigureOptions) -> list[str]:
    files = []
    for fmt in options.formats:
        path = folder / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=options.dpi, **({"pil_kwargs": {"compress_level": 3}} if fmt == "png" else {}))
        files.append(path.name)
    fig.clear()
    return files


def percentile_rgb(pca: np.ndarray) -> np.ndarray:
    """(H, W, 3) PCA coordinates -> [0, 1] RGB, each channel stretched between its 1st and 99th percentile."""
    lo = np.percentile(pca, 1, axis=(0, 1))
    hi = np.percentile(pca, 99, axis=(0, 1))
    return np.clip((pca - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Titles from the stored metrics


def point_label(view: ImageView, slot) -> str:
    return f"τ={slot.tau:g}, α={slot.alpha:g}, d={view.d}, k={view.k}"


def metric_line(view: ImageView, slot) -> str:
    """The paper's per-scope numbers, as stored in the rows (empty when rows are absent)."""
    row = view.metrics.get((slot.scope, slot.tau, slot.alpha))
    if row is None:
        return ""
    n = row.get("n_tokens") or view.labels[0].size
    parts = []
    if row.get("kept_queries") is not None:
        parts.append(f"{row['kept_queries']} masks")
    if row.get("effective_tokens") is not None:
        parts.append(f"{row['effective_tokens']}/{n} effective tokens")
    if row.get("flip_ratio") is not None:
        parts.append(f"flip {100 * row['flip_ratio']:.1f}% (processed {100 * (row.get('flip_ratio_processed') or 0):.1f}%)")
    if row.get("cos_distance") is not None:
        parts.append(f"cos distance {row['cos_distance']:.4f}")
    if row.get("iou") is not None:
        parts.append(f"IoU {row['iou']:.3f}")
    return ", ".join(parts)


def flip_text(view: ImageView, slot, processed: bool) -> str:
    row = view.metrics.get((slot.scope, slot.tau, slot.alpha))
    key = "flip_ratio_processed" if processed else "flip_ratio"
    if row is None or row.get("effective_tokens") is None:
        return ""
    if row.get(key) is None:
        return "no effective tokens"
    return f"{100 * row[key]:.1f}% of {row['effective_tokens']} effective tokens changed"


def suptitle(fig, view: ImageView, text: str, slot=None) -> None:
    import textwrap

    lines = [f"{text} — {view.image_id}"]
    if slot is not None:
        detail = metric_line(view, slot)
        lines.append(point_label(view, slot) + (f"; {detail}" if detail else ""))
        row = view.metrics.get((slot.scope, slot.tau, slot.alpha)) or {}
        if row.get("kept_queries") == 0:
            lines.append("no mask kept for this scope: DATR(F) = F, so nothing can change")
    width = max(40, int(fig.get_figwidth() * 12))  # ~characters of a 10 pt title per inch
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines))


# ----------------------------------------------------------------------------------------------
# The figures


def fig_encoder_pca(view: ImageView, folder: Path, options: FigureOptions) -> FigureRecord:
    fig, (a, b) = new_figure(2, options)
    show_image(a, view.image)
    panel_title(a, 0, "input (1008×1008, as the model sees it)" if view.image is not None else "input (not kept)")
    b.imshow(percentile_rgb(view.encoder_pca), extent=EXTENT, interpolation="nearest")
    panel_title(b, 1, "encoder features, PCA 1–3 → RGB")
    suptitle(fig, view, "Encoder features")
    files = save(fig, folder, "encoder_pca", options)
    return FigureRecord("encoder_pca", files, "Encoder features",
                        "Encoder vision features (256×72×72); the first three principal components shown as RGB, "
                        "each stretched between its 1st and 99th percentile.", "Fig. 1")


def fig_structural(view: ImageView, palette: ClusterPalette, folder: Path, options: FigureOptions) -> FigureRecord:
    n = 3 if view.gt is not None else 2
    fig, axes = new_figure(n, options, legend_rows=2)
    show_labels(axes[0], view.labels_processed[0], palette)
    panel_title(axes[0], 0, "processed (3×3 plurality filter)")
    show_labels(axes[1], view.labels[0], palette)
    panel_title(axes[1], 1, "raw KMeans labels")
    extra = []
    if view.gt is not None:
        axes[2].imshow(class_rgb(view.gt), extent=EXTENT, interpolation="nearest")
        panel_title(axes[2], 2, "ground truth (token grid)")
        extra = [("GT: " + class_name(c), class_colour(c)) for c in sorted(set(np.unique(view.gt).tolist()) - {255})]
    cluster_legend(fig, palette, [view.labels[0], view.labels_processed[0]], extra)
    fig.suptitle(f"Encoder structural clustering (PCA d={view.d}, k={view.k}) — {view.image_id}")
    files = save(fig, folder, "structural_clustering", options)
    return FigureRecord("structural_clustering", files, "Encoder structural clustering",
                        "KMeans on the PCA-reduced encoder tokens, processed and raw. Cluster colours follow the GT class "
                        "each cluster overlaps most (one-to-one matching, display only).", "Fig. 2")


def fig_scope_clustering(view: ImageView, palette: ClusterPalette, j: int, folder: Path, options: FigureOptions,
                         raw: bool | None) -> FigureRecord:
    """raw=None: the global figure (processed | raw of one scope); raw=True/False: encoder | DATR_p."""
    slot = view.slots[j]
    eff = view.effective[j]
    fig, (a, b) = new_figure(2, options, legend_rows=2)
    if raw is None:
        show_labels(a, view.labels_processed[j], palette)
        panel_title(a, 0, "global DATR clustering, processed")
        show_labels(b, view.labels[j], palette)
        panel_title(b, 1, "global DATR clustering, raw")
        shown = [view.labels_processed[j], view.labels[j]]
        stem, title, paper = "global_clustering", "Global DATR clustering", "Fig. 3"
        caption = ("KMeans on DATR(F) with one softmax over the kept queries of all prompts; labels aligned to the "
                   "encoder clustering (Hungarian), processed and raw.")
    else:
        maps = view.labels if raw else view.labels_processed
        kind = "raw" if raw else "processed"
        show_labels(a, maps[0], palette)
        outline(a, eff)
        panel_title(a, 0, f"encoder clustering, {kind}")
        show_labels(b, maps[j], palette)
        outline(b, eff)
        panel_title(b, 1, f"DATR clustering ({slot.scope}), {kind}")
        shown = [maps[0], maps[j]]
        stem = f"class-{safe_name(slot.scope)}_clustering" + ("_raw" if raw else "")
        title = f"{slot.scope}: encoder vs DATR clustering ({kind})"
        paper = "Fig. 6" if raw else "Fig. 5"
        caption = (f"Encoder clustering and the clustering of DATR_{slot.scope}(F) ({kind}); the white outline is the "
                   f"effective region E (mask weight ≥ 0.5) of the '{slot.scope}' prompt.")
    cluster_legend(fig, palette, shown)
    suptitle(fig, view, title, slot)
    files = save(fig, folder, stem, options)
    return FigureRecord(stem, files, title, caption, paper)


def fig_comparison(view: ImageView, palette: ClusterPalette, j: int, folder: Path, options: FigureOptions) -> FigureRecord:
    slot = view.slots[j]
    eff = view.effective[j]
    weights = view.mask_weights[slot.tau_index, slot.scope_index]
    is_global = slot.kind == "global"
    fig, axes = new_figure(4, options, legend_rows=2)
    if is_global and view.gt is not None:
        show_image(axes[0], view.image, grey=view.image is not None)
        axes[0].imshow(np.dstack([class_rgb(view.gt) / 255.0, np.where(view.gt == 255, 0.0, 0.6)]), extent=EXTENT,
                       interpolation="nearest")
        outline(axes[0], eff)
        panel_title(axes[0], 0, "ground truth, effective region outlined")
    else:
        heatmap(fig, axes[0], weights, "magma", "mask weight W", 0.0, 1.0, image=view.image)
        outline(axes[0], eff, colour="cyan")
        panel_title(axes[0], 0, "mask weight W, E outlined")
    for ax, index, lab, name in ((axes[1], 1, view.labels[0], "encoder"), (axes[2], 2, view.labels[j], "DATR")):
        show_image(ax, view.image, grey=True)
        show_labels(ax, lab, palette, inside=eff if not is_global else None, opacity=0.85 if not is_global else 1.0)
        outline(ax, eff, colour="black", width=0.6)
        panel_title(ax, index, f"{name} clusters" + (" in E" if not is_global else ""))
    show_image(axes[3], view.image, grey=True)
    changed = eff & (view.labels[j] != view.labels[0])
    agree = np.zeros(eff.shape + (4,), dtype=np.float32)
    agree[eff & ~changed] = (*to_unit(SAME_COLOUR), 0.55)
    agree[changed] = (*to_unit(FLIP_COLOUR), 0.95)
    axes[3].imshow(agree, extent=EXTENT, interpolation="nearest")
    panel_title(axes[3], 3, "agreement in E (raw)")
    shown = [view.labels[0], view.labels[j]] if is_global else [view.labels[0][eff], view.labels[j][eff]]
    cluster_legend(fig, palette, shown, [("same cluster", SAME_COLOUR), ("changed cluster", FLIP_COLOUR)])
    if is_global:
        stem, title, paper = "global_comparison", "Global comparison: encoder vs global DATR", "Fig. 4"
    else:
        stem, title, paper = f"class-{safe_name(slot.scope)}_comparison", f"{slot.scope}: encoder vs DATR", "Fig. 7"
    suptitle(fig, view, title, slot)
    files = save(fig, folder, stem, options)
    return FigureRecord(stem, files, title,
                        "Where the decoder acts (mask weight / GT), the encoder and DATR clusters (raw, aligned) and the "
                        "tokens of the effective region E whose cluster changed.", paper)


def fig_flips(view: ImageView, palette: ClusterPalette, j: int, folder: Path, options: FigureOptions) -> FigureRecord:
    slot = view.slots[j]
    eff = view.effective[j]
    fig, axes = new_figure(2, options, legend_rows=2)
    shown = []
    for index, (maps, kind) in enumerate(((view.labels, "raw"), (view.labels_processed, "processed"))):
        ax = axes[index]
        changed = eff & (maps[j] != maps[0])
        show_image(ax, view.image, grey=True)
        show_labels(ax, maps[j], palette, inside=changed, opacity=1.0)
        outline(ax, eff, colour="black", width=0.6)
        text = flip_text(view, slot, processed=kind == "processed")
        panel_title(ax, index, f"{kind}: changed tokens, new cluster" + (f"\n{text}" if text else ""))
        shown.append(maps[j][changed])
    cluster_legend(fig, palette, [s for s in shown if s.size] or [np.zeros(0, dtype=np.int64)])
    stem = f"class-{safe_name(slot.scope)}_flips"
    title = f"{slot.scope}: DATR-induced cluster changes"
    suptitle(fig, view, title, slot)
    files = save(fig, folder, stem, options)
    return FigureRecord(stem, files, title,
                        "Tokens of the effective region E (black outline) whose aligned DATR cluster differs from the "
                        "encoder cluster, coloured by the cluster they moved to; raw and processed labels.", "Fig. 8")


def fig_decoder_masks(view: ImageView, folder: Path, options: FigureOptions, tau) -> FigureRecord:
    import matplotlib

    p_count = len(view.prompts)
    fig, axes = new_figure(p_count + 1, options, legend_rows=1, ncols=min(p_count + 1, 3))
    masks = view.decoder_masks()
    have_probs = masks is not None and view.scores is not None and tau is not None
    # (a) every prompt's kept masks in its class colour; later prompts drawn over earlier ones
    show_image(axes[0], view.image, grey=True)
    overlay = None
    for p, cid in enumerate(view.class_ids):
        if have_probs:
            kept = view.scores[p] >= tau
            union = (masks[p][kept] >= 0.5).any(0) if kept.any() else None
        else:
            union = view.mask_weights[0, 1 + p] >= 0.5
        if union is not None and union.any():
            overlay = np.zeros(union.shape + (4,), dtype=np.float32) if overlay is None else overlay
            overlay[union] = (*to_unit(class_colour(cid)), 0.7)
    if overlay is not None:
        axes[0].imshow(overlay, extent=EXTENT, interpolation="nearest")
    panel_title(axes[0], 0, "all prompts (mask prob. ≥ 0.5)" if have_probs else "all prompts (pooled weight ≥ 0.5)")
    cmap = matplotlib.colormaps["tab20"]
    for p, prompt in enumerate(view.prompts):
        ax = axes[p + 1]
        show_image(ax, view.image, grey=True)
        if have_probs:
            order = top_masks(view, p, tau, view.scores.shape[1])
            overlay = np.zeros(masks.shape[-2:] + (4,), dtype=np.float32)
            for rank, q in enumerate(order):  # lower-scoring masks drawn over higher ones where they overlap
                region = masks[p, q] >= 0.5
                if not region.any():
                    continue
                overlay[region] = (*cmap(rank % 20)[:3], 0.55)
                ys, xs = np.nonzero(region)
                ax.text((xs.mean() + 0.5) / region.shape[1], (ys.mean() + 0.5) / region.shape[0], str(rank),
                        fontsize=6, ha="center", va="center", color="black",
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
            ax.imshow(overlay, extent=EXTENT, interpolation="nearest")
            panel_title(ax, p + 1, f"{prompt}: {len(order)} masks (score ≥ {tau:g})")
        else:
            weights = view.mask_weights[0, 1 + p]
            ax.imshow(weights, extent=EXTENT, cmap="magma", vmin=0, vmax=1, alpha=0.65, interpolation="nearest")
            panel_title(ax, p + 1, f"{prompt}: pooled mask weight")
    class_legend(fig, list(view.class_ids))
    fig.suptitle(f"Decoder masks overview — {view.image_id}" + (f" (τ={tau:g})" if tau is not None else ""))
    files = save(fig, folder, "decoder_masks", options)
    caption = ("Every kept decoder mask (score ≥ τ, probability ≥ 0.5) per prompt, numbered by score rank; "
               "panel (a) overlays all prompts in their class colours.")
    if have_probs and view.mask_probs is None:
        caption += " Full-resolution masks were not kept for this image: the masks pooled to the 72×72 token grid are shown."
    if not have_probs:
        caption = "No per-query masks were handed over for this image; the pooled mask weights W_p are shown instead."
    return FigureRecord("decoder_masks", files, "Decoder masks overview", caption, "Fig. 21")


def fig_mask(view: ImageView, p: int, q: int, rank: int, folder: Path, options: FigureOptions) -> FigureRecord:
    prompt = view.prompts[p]
    probs = view.decoder_masks()[p, q].astype(np.float32)  # (288, 288), or (72, 72) pooled
    similarity = view.encoder_similarity[p, q] if view.has_similarity(p, q) else None
    region = probs >= 0.5
    if similarity is not None:
        fig, (a, b, c) = new_figure(3, options)
        heatmap(fig, a, similarity, "viridis", "cosine similarity", -1.0, 1.0)
        panel_title(a, 0, "encoder similarity")
        heatmap(fig, b, probs, "magma", "mask probability", 0.0, 1.0, image=view.image)
        panel_title(b, 1, "decoder activation")
        # red = decoder activation, green = encoder similarity (min-max scaled); yellow where both are high
        sim_up = np.repeat(np.repeat(similarity, probs.shape[0] // similarity.shape[0], 0), probs.shape[1] // similarity.shape[1], 1)
        lo, hi = float(sim_up.min()), float(sim_up.max())
        composite = np.dstack([probs, (sim_up - lo) / max(hi - lo, 1e-12), np.zeros_like(probs)])
        c.imshow(np.clip(composite, 0, 1), extent=EXTENT, interpolation="nearest")
        outline(c, region, colour="white", width=0.8)
        panel_title(c, 2, "comparison (R decoder, G encoder)")
        caption = ("(a) cosine similarity of every encoder token to the mask-weighted mean encoder feature; (b) the "
                   "decoder's mask probability over the image; (c) both at once: red = decoder only, green = encoder "
                   "only, yellow = both; white outline = mask probability ≥ 0.5.")
    else:
        fig, (b, c) = new_figure(2, options)
        heatmap(fig, b, probs, "magma", "mask probability", 0.0, 1.0, image=view.image)
        panel_title(b, 0, "decoder activation")
        c.imshow(percentile_rgb(view.encoder_pca), extent=EXTENT, interpolation="nearest")
        outline(c, region, colour="white", width=0.8)
        panel_title(c, 1, "mask on encoder PCA → RGB")
        caption = ("(a) the decoder's mask probability over the image; (b) the mask outline (probability ≥ 0.5) on the "
                   "encoder features' PCA → RGB. The encoder-similarity heatmap needs BatchMaps.encoder_similarity, "
                   "which this run did not hand over.")
    if view.mask_probs is None:
        caption += " The decoder activation is the mask pooled to the 72×72 token grid (full resolution was not kept)."
    score = float(view.scores[p, q])
    stem = f"mask-{safe_name(prompt)}-{rank}"
    title = f"{prompt} mask {rank}: decoder attention"
    fig.suptitle(f"{title} (query {q}, score {score:.3f}) — {view.image_id}")
    files = save(fig, folder, stem, options)
    return FigureRecord(stem, files, title, caption, "Fig. 22–24")


# ----------------------------------------------------------------------------------------------
# Manifest


def write_manifest(folder: Path, view: ImageView, records: list[FigureRecord], cfg) -> Path:
    """folder/figures.json; figures drawn earlier for the same image and not redrawn now are kept."""
    path = folder / "figures.json"
    figures = [r.__dict__ for r in records]
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old.get("image_id") == view.image_id:
            drawn = {r.name for r in records}
            kept = [f for f in old.get("figures", []) if f["name"] not in drawn and all((folder / x).exists() for x in f["files"])]
            figures = kept + figures
    payload = {
        "image_id": view.image_id,
        "d": view.d, "k": view.k,
        "prompts": list(view.prompts),
        "simulated": source_is_simulated(cfg),
        "has_gt": view.gt is not None,
        "has_encoder_similarity": view.encoder_similarity is not None,
        "figures": figures,
    }
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    return path


def source_is_simulated(cfg) -> bool:
    """What the sweep's run.json says (a feature cache may hold simulated outputs), else the configured model."""
    run_json = Path(cfg.out) / "run.json"
    if run_json.is_file():
        try:
            return bool(json.loads(run_json.read_text()).get("simulated", False))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    return getattr(cfg, "model", None) == "simulated"
