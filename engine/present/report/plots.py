"""The report's dataset figures: per-class distributions, quality against mask IoU, parameter-grid curves.

Each draws stored per-image values; the only numbers computed are summaries of them
(quartiles, means, t-intervals, correlations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.core.choices import ENCODER
from engine.present.html import ReportFigure
from engine.present.layout import fit_legend, set_suptitle, set_title
from engine.present.palette import scope_colour, to_unit
from engine.present.provenance import FEW_TOKENS
from engine.present.report.rows import Reference, Rows, point_mask
from engine.present.report.tables import quartiles
from engine.present.style import new_canvas, save

DISTRIBUTIONS = (
    ("flip_ratio", "Flip ratio (raw)", "Share of effective tokens whose aligned cluster differs from the encoder cluster", 100.0, "%"),
    ("flip_ratio_processed", "Flip ratio (processed)", "The same on the 3×3-filtered maps (alignment recomputed on them)", 100.0, "%"),
    ("effective_tokens", "Effective tokens", "Tokens whose mask weight W (max over kept masks, pooled to the 72×72 grid) is ≥ 0.5, of 5184", 1.0, ""),
    ("cos_distance", "Average cosine distance", "Mean over effective tokens of 1 − cos(F_j, A_j), A_j the attended query vector (the paper's measure)", 1.0, ""),
    ("datr_shift", "DATR shift", "Mean over effective tokens of 1 − cos(F_j, DATR(F)_j), how far the re-encoding moves a token", 1.0, ""),
)
ALPHA_DEPENDENT = {"flip_ratio", "flip_ratio_processed", "datr_shift"}  # the rest depend on tau only
DISTRIBUTION_ORDER = ("flip_ratio", "flip_controls", "flip_ratio_processed", "effective_tokens", "cos_distance", "datr_shift")
# symmetric-log axes: linear below the threshold, logarithmic above, so 0.2% and 35% both read; (threshold, ticks)
SYMLOG = {"%": (0.1, (0.1, 0.3, 1, 3, 10, 30, 100)), "tokens": (1.0, (1, 3, 10, 30, 100, 300, 1000, 3000, 10000))}
HATCHES = ("", "///", "...", "xxx", "\\\\\\", "ooo")
FEW_COLOUR = "#b00020"  # the report's warning red: a class with too few effective tokens
SMALL_N = 5  # fewer values than this: points and a median tick, no box
CONTROLS = (("flip_ratio", "flip ratio", ""), ("flip_ratio_null", "null control", "///"),
            ("flip_ratio_reseed", "reseed control", "..."))
QUALITY = (("accuracy", "Accuracy (matched)"), ("nmi", "NMI"), ("ari", "ARI"))


def distribution_figure(rows: Rows, ref: Reference, scopes, metric: str, title: str, meaning: str, scale: float, unit: str,
                        out: Path, formats) -> ReportFigure | None:
    """Box + points per scope; one box per alpha (flip/shift) or per tau (effective tokens, cos distance)."""
    series_param = "alpha" if metric in ALPHA_DEPENDENT else "tau"
    series = ref.grid.get(series_param) or [None]
    base = rows.select(d=ref.d, k=ref.k)
    if series_param == "alpha" and ref.tau is not None:
        base &= rows.select(tau=ref.tau)
    if series_param == "tau" and ref.alpha is not None:
        base &= rows.select(alpha=ref.alpha)  # tau-only metrics repeat over alpha; one copy per image
    datr_scopes = [(s, c) for s, c in scopes if s != ENCODER]
    if not datr_scopes:
        return None
    fig, (ax,) = new_canvas(max(3.5, 1.1 * len(datr_scopes) * max(1, len(series)) ** 0.5 + 0.6), 2.5)
    width = 0.8 / len(series)
    rng = np.random.default_rng(0)  # jitter of the points only
    top = 0.0
    for si, value in enumerate(series):
        for xi, (scope, cid) in enumerate(datr_scopes):
            keep = base & rows.select(scope=scope) & (rows.select(**{series_param: value}) if value is not None else True)
            data = rows[metric][keep] * scale
            data = data[~np.isnan(data)]
            x = xi - 0.4 + width * (si + 0.5)
            if data.size == 0:
                ax.text(x, 0, "no\ndata", ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            top = max(top, float(data.max()))
            box_and_points(ax, data, x, width, to_unit(scope_colour(scope, cid)), HATCHES[si % len(HATCHES)], rng)
    first = base & (rows.select(**{series_param: series[0]}) if series[0] is not None else True)
    counts = [int((~np.isnan(rows[metric][first & rows.select(scope=s)])).sum()) for s, _ in datr_scopes]
    label_scopes(ax, datr_scopes, counts, token_medians(rows, ref, datr_scopes))
    n_tok = np.nanmax(rows["n_tokens"]) if rows.n and not np.isnan(rows["n_tokens"]).all() else None
    ax.set_ylabel(f"effective tokens (of {n_tok:.0f})" if metric == "effective_tokens" and n_tok
                  else f"{title.lower()}" + (f" ({unit})" if unit else ""))
    value_axis(ax, unit if unit else ("tokens" if metric == "effective_tokens" else ""), top)
    fixed = "; ".join(x for x in (
        f"τ={ref.tau:g}" if series_param == "alpha" and ref.tau is not None else "",
        f"α={ref.alpha:g}" if series_param == "tau" and ref.alpha is not None else "",
        f"d={ref.d:g}, k={ref.k:g}" if metric in ALPHA_DEPENDENT else "") if x)
    set_title(ax, f"{title} per class over images" + (f" ({fixed})" if fixed else ""), 9.0, loc="center")
    series_legend(ax, series_param, series)
    files = save(fig, out, f"dist_{metric}", formats)
    return ReportFigure(f"dist_{metric}", files, f"{title} per class", f"{meaning}. One point per image; boxes show the "
                        f"quartiles (under {SMALL_N} images: the points and a median tick only); n = images with a value "
                        f"(scopes with no effective token have none); tok = the median effective tokens per image, and a "
                        f"class under {FEW_TOKENS} is marked too few tokens (one token moves its share by 2% or more)."
                        + (" Symmetric-log axis: linear near zero, logarithmic above, so small and large values both read."
                           if unit == "%" or metric == "effective_tokens" else ""))


def series_legend(ax, series_param: str, series) -> None:
    """The hatch of each alpha (or tau) when the figure draws more than one."""
    from matplotlib.patches import Patch

    if len(series) > 1:
        sym = "α" if series_param == "alpha" else "τ"
        handles = [Patch(facecolor="0.85", edgecolor="0.2", hatch=HATCHES[i % len(HATCHES)], label=f"{sym}={v:g}")
                   for i, v in enumerate(series)]
        fit_legend(ax.get_figure(), handles)  # below the axes, where it covers no point


def token_medians(rows: Rows, ref: Reference, scopes) -> list[float | None]:
    """Each scope's median effective tokens per image at the reference tau (they do not depend on alpha)."""
    keep = rows.select(d=ref.d, k=ref.k)
    if ref.tau is not None:
        keep &= rows.select(tau=ref.tau)
    if ref.alpha is not None:
        keep &= rows.select(alpha=ref.alpha)
    return [quartiles(rows["effective_tokens"][keep & rows.select(scope=s)])[1] for s, _ in scopes]


def label_scopes(ax, scopes, counts: list[int], tokens: list[float | None]) -> None:
    """Tick labels: the scope, its image count and median effective tokens; "too few tokens" in red under FEW_TOKENS."""
    ax.set_xticks(range(len(scopes)))
    ax.set_xlim(-0.6, len(scopes) - 0.4)
    labels = []
    for (scope, _), n, tok in zip(scopes, counts, tokens, strict=True):
        few = tok is not None and tok < FEW_TOKENS
        labels.append(f"{scope}\nn={n}" + ("" if tok is None else f", {tok:.0f} tok") + ("\ntoo few tokens" if few else ""))
    ax.set_xticklabels(labels)
    for text, tok in zip(ax.get_xticklabels(), tokens, strict=True):
        if tok is not None and tok < FEW_TOKENS:
            text.set_color(FEW_COLOUR)


def box_and_points(ax, data: np.ndarray, x: float, width: float, colour, hatch: str, rng) -> None:
    """A quartile box (whiskers to the furthest value within 1.5 IQR, as matplotlib's boxplot) with every value as a
    point; under SMALL_N values only the points and a median tick. Drawn as one box, one set of lines and the points."""
    from matplotlib.cbook import boxplot_stats
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    if data.size >= SMALL_N:
        (stats,) = boxplot_stats(data, whis=1.5)
        half = width * 0.85 / 2
        ax.add_patch(Rectangle((x - half, stats["q1"]), 2 * half, stats["q3"] - stats["q1"], facecolor=(*colour, 0.75),
                               edgecolor="0.2", hatch=hatch, linewidth=1.0, zorder=2))
        cap = half / 2
        whiskers = [[(x, stats["q1"]), (x, stats["whislo"])], [(x, stats["q3"]), (x, stats["whishi"])],
                    [(x - cap, stats["whislo"]), (x + cap, stats["whislo"])], [(x - cap, stats["whishi"]), (x + cap, stats["whishi"])]]
        ax.add_collection(LineCollection(whiskers, colors="0.2", linewidths=1.0, zorder=2))
        ax.add_collection(LineCollection([[(x - half, stats["med"]), (x + half, stats["med"])]], linewidths=1.2, zorder=2.5,
                                         colors="white" if sum(colour) < 1.2 else "black"))
        ax.scatter(x + rng.uniform(-width * 0.25, width * 0.25, data.size), data, s=6, color="0.15", alpha=0.5,
                   linewidths=0, zorder=3)
        return
    ax.hlines(np.median(data), x - width * 0.4, x + width * 0.4, color="0.1", linewidth=1.5, zorder=3)
    ax.scatter(np.full(data.size, x), data, s=30, color=colour, edgecolors="0.1", linewidths=0.6, zorder=4, hatch=hatch)


def value_axis(ax, unit: str, top: float) -> None:
    """A symmetric-log axis for shares (%) and token counts with ticks at 0.1, 0.3, 1, 3, 10, 30, 100 (%) or 1, 3,
    10, ... (tokens), linear otherwise; from zero to above the largest value."""
    from matplotlib.ticker import NullLocator

    if unit not in SYMLOG:
        ax.set_ylim(bottom=0, top=top * 1.08 if top > 0 else 1)
        return
    linthresh, ticks = SYMLOG[unit]
    upper = max(top * 1.5, linthresh * 3)
    if unit == "%":
        upper = min(upper, 150.0)
    ax.set_yscale("symlog", linthresh=linthresh, linscale=0.3)
    ax.set_ylim(bottom=0, top=upper)
    shown = [0.0] + [t for t in ticks if t <= upper]
    ax.set_yticks(shown, [f"{t:g}" for t in shown])
    ax.yaxis.set_minor_locator(NullLocator())


def controls_figure(rows: Rows, ref: Reference, scopes, out: Path, formats) -> ReportFigure | None:
    """Per class at the reference point: the flip ratio beside its null and reseed controls (when the rows carry them)."""
    from matplotlib.patches import Patch

    if np.isnan(rows["flip_ratio_null"]).all() and np.isnan(rows["flip_ratio_reseed"]).all():
        return None
    base = point_mask(rows, ref)
    datr_scopes = [(s, c) for s, c in scopes if s != ENCODER]
    fig, (ax,) = new_canvas(max(4.0, 1.3 * len(datr_scopes) + 0.6), 2.6)
    width = 0.8 / len(CONTROLS)
    rng = np.random.default_rng(0)
    top = 0.0
    for xi, (scope, cid) in enumerate(datr_scopes):
        keep = base & rows.select(scope=scope)
        for ci, (metric, _, hatch) in enumerate(CONTROLS):
            data = rows[metric][keep] * 100.0
            data = data[~np.isnan(data)]
            if data.size == 0:
                continue
            top = max(top, float(data.max()))
            colour = to_unit(scope_colour(scope, cid)) if ci == 0 else (0.8, 0.8, 0.8)
            box_and_points(ax, data, xi - 0.4 + width * (ci + 0.5), width, colour, hatch, rng)
    counts = [int((~np.isnan(rows["flip_ratio"][base & rows.select(scope=s)])).sum()) for s, _ in datr_scopes]
    label_scopes(ax, datr_scopes, counts, token_medians(rows, ref, datr_scopes))
    ax.set_ylabel("flip ratio (%)")
    value_axis(ax, "%", top)
    set_title(ax, f"Flip ratio and its controls per class ({ref.label()})", 9.0, loc="center")
    handles = [Patch(facecolor="0.55" if i == 0 else "0.8", edgecolor="0.2", hatch=h, label=lab)
               for i, (_, lab, h) in enumerate(CONTROLS)]
    fit_legend(fig, handles, max_cols=3)
    files = save(fig, out, "dist_flip_controls", formats)
    return ReportFigure("dist_flip_controls", files, "Flip ratio beside its controls",
                        "Per class, the flip ratio (class colour), its null control (the scope's attended vectors permuted "
                        "across the tokens: same displacement sizes, no token–query correspondence) and its reseed control "
                        "(the encoder tokens clustered with seed + 1), each measured on the effective tokens. A flip ratio "
                        "inside its controls' range is what any displacement of that size, or another KMeans start, does. "
                        f"tok = median effective tokens per image; under {FEW_TOKENS}: too few tokens.")


def correlation(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r and Spearman rho (NaN when fewer than 3 points or a constant side)."""
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size)
        for value in np.unique(v):  # ties share their mean rank
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    return float(np.corrcoef(x, y)[0, 1]), float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def fmt_corr(r: float, rho: float, n: int) -> str:
    if np.isnan(r):
        return f"n={n}: too few points for a correlation"
    return f"Pearson r={r:.2f}, Spearman ρ={rho:.2f} (n={n})"


def quality_figure(rows: Rows, ref: Reference, scopes, out: Path, formats) -> ReportFigure | None:
    """Per (image, prompt): DATR_p clustering quality against the prompt's mask IoU."""
    keep = point_mask(rows, ref) & rows.select(scope_kind="class")
    if not keep.any() or np.isnan(rows["iou"][keep]).all() or np.isnan(rows["accuracy"][keep]).all():
        return None
    enc_keep = point_mask(rows, ref, tau=False, alpha=False) & rows.select(scope=ENCODER)
    enc_acc = dict(zip(rows["image_id"][enc_keep], rows["accuracy"][enc_keep], strict=True))
    gain = np.array([a - enc_acc.get(i, np.nan) for i, a in zip(rows["image_id"], rows["accuracy"], strict=True)])
    panels = list(QUALITY) + [("accuracy_gain", "Accuracy gain over encoder")]
    fig, axes = new_canvas(2.3, 2.3, ncols=len(panels))
    iou = rows["iou"]
    for ax, (metric, label) in zip(axes, panels, strict=True):
        values = gain if metric == "accuracy_gain" else rows[metric]
        for scope, cid in scopes:
            sel = keep & rows.select(scope=scope)
            if not sel.any():
                continue
            colour = to_unit(scope_colour(scope, cid))
            ax.scatter(iou[sel], values[sel], s=14, color=colour, edgecolors="0.3", linewidths=0.3, label=scope, alpha=0.85)
        r, rho = correlation(iou[keep], values[keep])
        n = int((~(np.isnan(iou[keep]) | np.isnan(values[keep]))).sum())
        ax.set_xlabel("mask IoU of the prompt")
        ax.set_ylabel(label)
        ax.set_xlim(-0.02, 1.02)
        if metric == "accuracy_gain":
            ax.axhline(0, color="0.5", linewidth=0.8, linestyle="--")
        set_title(ax, f"{label}\n{fmt_corr(r, rho, n)}", 8.0, loc="center")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fit_legend(fig, handles, labels=labels)
    set_suptitle(fig, f"Clustering quality vs segmentation IoU per image and prompt ({ref.label()})")
    files = save(fig, out, "quality_vs_iou", formats)
    return ReportFigure("quality_vs_iou", files, "Clustering quality vs segmentation IoU",
                        "Each point is one image and prompt: the quality of the DATR clustering of that prompt's scope "
                        "(Hungarian-matched accuracy, NMI, ARI against the GT token grid, and its accuracy minus the encoder "
                        "clustering's) against the IoU of the prompt's kept masks with its GT class. Correlations pool "
                        "all points.")
