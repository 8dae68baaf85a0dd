"""Drawing helpers shared by the per-image figures: canvas, panels, legends, heatmaps, titles from the rows."""

from __future__ import annotations

import numpy as np

from engine.present.figures.raster import raster
from engine.present.figures.view import FigureOptions, ImageView
from engine.present.layout import fit_legend, pooled_figure, set_suptitle, set_title, wrap
from engine.present.palette import ClusterPalette, class_colour, class_name, to_unit
from engine.present.provenance import FEW_TOKENS

PANEL_LETTERS = "abcdefghij"
TITLE_SIZE = 9.0  # points, the panel titles
COUNT_SIZE = 8.0  # points, the numbers written inside a panel


def new_figure(n_panels: int, options: FigureOptions, ncols: int | None = None, sides: dict[int, str] | None = None):
    """A figure of n_panels square panels (axes off), laid out once when saved; sides: panel -> "colorbar" | "key"."""
    ncols = ncols or n_panels
    nrows = -(-n_panels // ncols)
    size = options.panel_inches
    fig = pooled_figure(options.pool, ncols, nrows, (size, size), sides=sides, dpi=options.dpi)
    for ax in fig.grid.axes:
        ax.set_axis_off()
    for ax in fig.grid.axes[n_panels:]:
        ax.set_visible(False)
    return fig, fig.grid.axes[:n_panels]


def panel_title(ax, index: int, text: str) -> None:
    """"(a) text", wrapped between words to the panel's width."""
    set_title(ax, f"({PANEL_LETTERS[index]}) {text}", TITLE_SIZE)


def show_image(ax, image: np.ndarray | None, grey: bool = False) -> None:
    """The model's input as backdrop; greyed (and lightened) when colours are drawn on top."""
    raster(ax).backdrop(image, grey)


def paint(ax, colours: np.ndarray, alpha=1.0) -> None:
    """A layer over the panel: (h, w, 3) colours with opacity `alpha` (scalar or (h, w)), or (h, w, 4) RGBA."""
    colours = np.asarray(colours)
    if colours.shape[-1] == 4:
        colours, alpha = colours[..., :3], colours[..., 3]
    raster(ax).paint(colours, alpha)


def show_labels(ax, labels: np.ndarray, palette: ClusterPalette, inside: np.ndarray | None = None, opacity: float = 1.0) -> None:
    """Cluster map with exact palette colours (nearest, no blending when opacity is 1)."""
    rgb = palette.rgb(labels)
    if inside is None:
        paint(ax, rgb, opacity)
    else:
        paint(ax, rgb, np.where(inside, opacity, 0.0).astype(np.float32))


def outline(ax, region: np.ndarray, colour: str = "white", width: float = 1.0) -> None:
    """Contour of a boolean token-grid region, drawn on the cell edges' midpoints (matplotlib's contour at 0.5,
    traced by contourpy, its own tracer, and drawn as one LineCollection without a ContourSet around it)."""
    if not region.any() or region.all():
        return
    import contourpy
    from matplotlib.collections import LineCollection

    h, w = region.shape
    xs = (np.arange(w) + 0.5) / w
    ys = (np.arange(h) + 0.5) / h
    lines = contourpy.contour_generator(xs, ys, region.astype(np.float64)).lines(0.5)
    ax.add_collection(LineCollection(lines, colors=[colour], linewidths=width, zorder=2), autolim=False)


def cmap_rgb(values: np.ndarray, cmap: str, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """(h, w) values -> (h, w, 3) colours in [0, 1] of a matplotlib colour map."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap).to_rgba(np.asarray(values, dtype=np.float32))[..., :3]


def heatmap(fig, ax, values: np.ndarray, cmap: str, label: str, vmin: float | None = None, vmax: float | None = None,
            image: np.ndarray | None = None, opacity: float = 0.65):
    """values over the panel in a colour map (over the greyed image when given), with its colour bar in the side axes."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    norm = Normalize(float(np.min(values)) if vmin is None else vmin, float(np.max(values)) if vmax is None else vmax)
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    colours = mappable.to_rgba(np.asarray(values, dtype=np.float32))[..., :3]
    if image is None:
        paint(ax, colours)
    else:  # near-zero values left transparent so the image stays readable
        show_image(ax, image, grey=True)
        paint(ax, colours, np.where(values < norm.vmin + 0.02, 0.0, opacity).astype(np.float32))
    cax = fig.grid.side_axes[fig.grid.axes.index(ax)]
    alpha = opacity if image is not None else None
    shows = (cmap, norm.vmin, norm.vmax, label, alpha)
    if fig.grid.colorbars.get(cax) != shows:  # a reused figure keeps a colour bar that shows the same
        if cax in fig.grid.colorbars:
            cax.cla()
        bar = fig.colorbar(mappable, cax=cax, label=label, alpha=alpha)
        bar.set_ticks([norm.vmin, (norm.vmin + norm.vmax) / 2, norm.vmax])  # three labelled values read a map
        fig.grid.colorbars[cax] = shows
    return mappable


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
    """A legend below the panels with as many columns as fit the figure's width."""
    fit_legend(fig, handles, title, swatches=True)


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
    """The panel's key number written inside it (bottom left, on a white box), wrapped to stay in the panel."""
    inside = ax.get_figure().grid.box[0] * 0.96 - 0.1  # the box's padding and the gap to the panel's edge
    ax.text(0.02, 0.02, wrap(text, inside, COUNT_SIZE), transform=ax.transAxes, ha="left", va="bottom",
            fontsize=COUNT_SIZE, zorder=5,
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


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def metric_line(view: ImageView, slot) -> str:
    """The paper's per-scope numbers, as stored in the rows (empty when rows are absent)."""
    row = view.metrics.get((slot.scope, slot.tau, slot.alpha))
    if row is None:
        return ""
    n = row.get("n_tokens") or view.labels[0].size
    parts = []
    if row.get("kept_queries") is not None:
        parts.append(f"{row['kept_queries']} mask" + ("" if row["kept_queries"] == 1 else "s"))
    if row.get("effective_tokens") is not None:
        few = " (too few tokens for a share to mean much)" if 0 < row["effective_tokens"] < FEW_TOKENS else ""
        parts.append(f"{row['effective_tokens']}/{n} effective tokens{few}")
    if row.get("cos_distance") is not None:
        parts.append(f"cos distance {row['cos_distance']:.4f}")
    if row.get("iou") is not None:
        parts.append(f"IoU {row['iou']:.3f}")
    return ", ".join(parts)


def pp(value, se=None) -> str:
    """A difference of shares in percentage points, with its standard error: "+1.2 ± 0.4 pp"."""
    return f"{100 * value:+.1f}" + ("" if se is None else f" ± {100 * se:.1f}") + " pp"


def controls_line(view: ImageView, slot) -> str:
    """The flip ratio with its controls, as stored in the rows: "flip 0.6% (processed 0.4%); null 1.2%, reseed 0.3%"."""
    row = view.metrics.get((slot.scope, slot.tau, slot.alpha)) or {}
    if row.get("flip_ratio") is None:
        return ""
    text = f"one seed: flip {pct(row['flip_ratio'])} (processed {pct(row.get('flip_ratio_processed'))})"
    controls = [f"{name} {pct(row[key])}" for key, name in (("flip_ratio_null", "null"), ("flip_ratio_reseed", "reseed"))
                if row.get(key) is not None]
    return text + (f", controls {', '.join(controls)}" if controls else "")


def effects_line(view: ImageView, slot) -> str:
    """The row's seed-ensemble effects with their standard errors, and "unstable" where flip_within >= flip_between."""
    row = view.metrics.get((slot.scope, slot.tau, slot.alpha)) or {}
    if row.get("effect_instability") is None:
        return ""
    parts = [f"effect {pp(row['effect_instability'], row.get('effect_instability_se'))} vs instability"]
    if row.get("effect_null") is not None:
        parts.append(f"{pp(row['effect_null'], row.get('effect_null_se'))} vs null")
    return ", ".join(parts) + (" (unstable seeds)" if unstable_seeds(row) else "")


def unstable_seeds(row: dict) -> bool:
    """flip_within >= flip_between, where the encoder's seeds disagree at all (two zeros are no instability)."""
    within, between = row.get("flip_within"), row.get("flip_between")
    return within is not None and between is not None and within > 0 and within >= between


def flip_count(view: ImageView, slot, changed: int, effective: int, processed: bool) -> str:
    """"7 of 1220 effective tokens changed (0.6%)" and the controls on a second line, as stored in the rows
    (the count from the maps, the shares from the rows)."""
    if effective == 0:
        return "no effective tokens"
    row = view.metrics.get((slot.scope, slot.tau, slot.alpha)) or {}
    share = row.get("flip_ratio_processed" if processed else "flip_ratio")
    share = changed / effective if share is None else share
    text = f"{changed} of {effective} effective tokens changed ({100 * share:.1f}%)"
    null = row.get("flip_ratio_null_processed" if processed else "flip_ratio_null")
    controls = ([f"null {pct(null)}"] if null is not None else []) + (
        [f"reseed {pct(row['flip_ratio_reseed'])}"] if row.get("flip_ratio_reseed") is not None and not processed else [])
    text += f"\ncontrols: {', '.join(controls)}" if controls else ""
    if not processed and row.get("effect_instability") is not None:  # the seed ensemble measures the raw labels
        text += f"\neffect {pp(row['effect_instability'])} vs instability"
        text += f", {pp(row['effect_null'])} vs null" if row.get("effect_null") is not None else ""
        text += " (unstable seeds)" if unstable_seeds(row) else ""
    return text


def suptitle(fig, view: ImageView, text: str, slot=None) -> None:
    lines = [("SIMULATED · " if view.simulated else "") + f"{text} — {view.image_id}"]
    if slot is not None:
        detail = metric_line(view, slot)
        lines.append(point_label(view, slot) + (f"; {detail}" if detail else ""))
        lines += [line for line in (controls_line(view, slot), effects_line(view, slot)) if line]
        row = view.metrics.get((slot.scope, slot.tau, slot.alpha)) or {}
        if row.get("kept_queries") == 0:
            lines.append("no mask kept for this scope: DATR(F) = F, so nothing can change")
    set_suptitle(fig, "\n".join(lines))
