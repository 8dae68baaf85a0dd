"""Drawing helpers shared by the per-image figures: canvas, panels, legends, heatmaps, titles from the rows."""

from __future__ import annotations

import numpy as np

from engine.present.figures.view import FigureOptions, ImageView
from engine.present.palette import ClusterPalette, class_colour, class_name, to_unit
from engine.present.style import new_canvas

EXTENT = (0.0, 1.0, 1.0, 0.0)  # every panel in unit coordinates, origin top-left (image convention)
PANEL_LETTERS = "abcdefghij"


def new_figure(n_panels: int, options: FigureOptions, legend_rows: int = 0, ncols: int | None = None):
    """A figure of n_panels square panels (axes off), room below for the legend rows."""
    ncols = ncols or n_panels
    nrows = -(-n_panels // ncols)
    size = options.panel_inches
    fig, axes = new_canvas(size * ncols, size * nrows + 0.35 + 0.22 * legend_rows, ncols=ncols, nrows=nrows)
    for ax in axes:
        ax.set_axis_off()
    return fig, axes[:n_panels]


def panel_title(ax, index: int, text: str) -> None:
    """"(a) text", wrapped to the panel's share of the figure width (a 9 pt title holds ~13 characters per inch)."""
    import textwrap

    columns = ax.get_subplotspec().get_gridspec().ncols
    width = max(16, int(ax.get_figure().get_figwidth() / columns * 13))
    lines = [textwrap.fill(line, width) for line in f"({PANEL_LETTERS[index]}) {text}".split("\n")]
    ax.set_title("\n".join(lines), loc="left")


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


def cluster_legend(fig, palette: ClusterPalette, shown: list[np.ndarray], extra: list[tuple[str, tuple]] | None = None,
                   title: str | None = None) -> None:
    from matplotlib.patches import Patch

    present = sorted(set(np.unique(np.concatenate([s.ravel() for s in shown])).tolist())) if shown else []
    handles = [Patch(facecolor=to_unit(tuple(palette.colours[c])), edgecolor="0.3", label=palette.names[c]) for c in present]
    for label, colour in extra or []:
        handles.append(Patch(facecolor=to_unit(colour), edgecolor="0.3", label=label))
    fitted_legend(fig, handles, title)


def class_legend(fig, class_ids: list[int], extra: list[tuple[str, tuple]] | None = None) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=to_unit(class_colour(c)), edgecolor="0.3", label=class_name(c)) for c in class_ids]
    for label, colour in extra or []:
        handles.append(Patch(facecolor=to_unit(colour), edgecolor="0.3", label=label))
    fitted_legend(fig, handles)


def fitted_legend(fig, handles: list, title: str | None = None) -> None:
    """A legend below the panels with as many columns as fit the figure's width; the figure grows by its extra rows."""
    if not handles:
        return
    renderer = fig.canvas.get_renderer()
    limit = 0.97 * fig.bbox.width
    for ncols in range(min(len(handles), 6), 0, -1):
        legend = fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False, title=title,
                            title_fontsize=8)
        if legend.get_window_extent(renderer).width <= limit or ncols == 1:
            break
        legend.remove()
    rows = -(-len(handles) // ncols)
    if rows > 1:  # the canvas was sized for one legend row
        fig.set_figheight(fig.get_figheight() + 0.22 * (rows - 1))


def changed_markers(ax, changed: np.ndarray, colours: np.ndarray, limit: int = 400) -> None:
    """A ringed dot on each changed token (when there are few), so that a single one shows at print size.

    changed: (H, W) bool; colours: (H, W, 3) uint8, each token's new-cluster colour.
    """
    count = int(changed.sum())
    if count == 0 or count > limit:
        return
    h, w = changed.shape
    ys, xs = np.nonzero(changed)
    ax.scatter((xs + 0.5) / w, (ys + 0.5) / h, s=22, c=colours[ys, xs] / 255.0, edgecolors="black", linewidths=0.8,
               zorder=4)


def count_box(ax, text: str) -> None:
    """The panel's key number written inside it (bottom left, on a white box)."""
    ax.text(0.02, 0.02, text, transform=ax.transAxes, ha="left", va="bottom", fontsize=8, zorder=5,
            bbox={"facecolor": "white", "edgecolor": "0.4", "boxstyle": "round,pad=0.25", "alpha": 0.9})


def zoom_to(ax, region: np.ndarray, margin: int = 4, largest: float = 0.5) -> bool:
    """Crop the panel to the region's bounding box (plus a margin) when that box is under `largest` of the grid."""
    if not region.any():
        return False
    h, w = region.shape
    ys, xs = np.nonzero(region)
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
    side = max(y1 - y0, x1 - x0)  # square, so the panel keeps its aspect
    if side * side >= largest * h * w:
        return False
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    y0 = min(max(0.0, cy - side / 2), h - side)
    x0 = min(max(0.0, cx - side / 2), w - side)
    ax.set_xlim(x0 / w, (x0 + side) / w)
    ax.set_ylim((y0 + side) / h, y0 / h)
    return True



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


def flip_count(view: ImageView, slot, changed: int, effective: int, processed: bool) -> str:
    """"7 of 1220 effective tokens changed (0.6%)", the share as stored in the rows (the count from the maps)."""
    if effective == 0:
        return "no effective tokens"
    row = view.metrics.get((slot.scope, slot.tau, slot.alpha)) or {}
    share = row.get("flip_ratio_processed" if processed else "flip_ratio")
    share = changed / effective if share is None else share
    return f"{changed} of {effective} effective tokens changed ({100 * share:.1f}%)"


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

