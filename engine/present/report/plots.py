"""The report's dataset figures: per-class distributions, quality against mask IoU, parameter-grid curves.

Each draws stored per-image values; the only numbers computed are summaries of them
(quartiles, means, t-intervals, correlations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.present.html import ReportFigure
from engine.present.layout import fit_legend, set_suptitle, set_title
from engine.present.palette import scope_colour, to_unit
from engine.present.report.rows import Reference, Rows, point_mask
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
# symmetric-log axes: linear below the threshold, logarithmic above, so 0.2% and 35% both read
SYMLOG = {"%": 1.0, "tokens": 10.0}
SMALL_N = 5  # fewer values than this: points and a median tick, no box
CONTROLS = (("flip_ratio", "flip ratio", ""), ("flip_ratio_null", "null control", "///"),
            ("flip_ratio_reseed", "reseed control", "..."))
QUALITY = (("accuracy", "Accuracy (matched)"), ("nmi", "NMI"), ("ari", "ARI"))
GRID_METRICS = (("flip_ratio", "flip ratio"), ("flip_ratio_processed", "flip ratio (processed)"),
                ("accuracy", "accuracy"), ("ari", "ARI"), ("datr_shift", "DATR shift"))
GRID_PARAMS = (("alpha", "α"), ("tau", "τ"), ("d", "PCA dims d"), ("k", "clusters k"))


def distribution_figure(rows: Rows, ref: Reference, scopes, metric: str, title: str, meaning: str, scale: float, unit: str,
                        out: Path, formats) -> ReportFigure | None:
    """Box + points per scope; one box per alpha (flip/shift) or per tau (effective tokens, cos distance)."""
    from matplotlib.patches import Patch

    series_param = "alpha" if metric in ALPHA_DEPENDENT else "tau"
    series = ref.grid.get(series_param) or [None]
    base = rows.select(d=ref.d, k=ref.k)
    if series_param == "alpha" and ref.tau is not None:
        base &= rows.select(tau=ref.tau)
    if series_param == "tau" and ref.alpha is not None:
        base &= rows.select(alpha=ref.alpha)  # tau-only metrics repeat over alpha; one copy per image
    datr_scopes = [(s, c) for s, c in scopes if s != "encoder"]
    if not datr_scopes:
        return None
    fig, (ax,) = new_canvas(max(3.5, 1.1 * len(datr_scopes) * max(1, len(series)) ** 0.5 + 0.6), 2.5)
    width = 0.8 / len(series)
    hatches = ("", "///", "...", "xxx", "\\\\\\", "ooo")
    rng = np.random.default_rng(0)  # jitter of the points only
    top = 0.0
    for si, value in enumerate(series):
        for xi, (scope, cid) in enumerate(datr_scopes):
            keep = base & rows.select(scope=scope)
            if value is not None:
                keep &= rows.select(**{series_param: value})
            data = rows[metric][keep] * scale
            data = data[~np.isnan(data)]
            x = xi - 0.4 + width * (si + 0.5)
            colour = to_unit(scope_colour(scope, cid))
            if data.size == 0:
                ax.text(x, 0, "no\ndata", ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            top = max(top, float(data.max()))
            box_and_points(ax, data, x, width, colour, hatches[si % len(hatches)], rng)
    ax.set_xticks(range(len(datr_scopes)))
    ax.set_xlim(-0.6, len(datr_scopes) - 0.4)
    counts = []
    for scope, _ in datr_scopes:
        keep = base & rows.select(scope=scope)
        if series[0] is not None:
            keep &= rows.select(**{series_param: series[0]})
        counts.append(int((~np.isnan(rows[metric][keep])).sum()))
    ax.set_xticklabels([f"{s}\n(n={n})" for (s, _), n in zip(datr_scopes, counts, strict=True)])
    ax.set_ylabel(f"{title.lower()}" + (f" ({unit})" if unit else ""))
    if metric == "effective_tokens":
        n_tok = np.nanmax(rows["n_tokens"]) if rows.n else np.nan
        if not np.isnan(n_tok):
            ax.set_ylabel(f"effective tokens (of {n_tok:.0f})")
    value_axis(ax, unit if unit else ("tokens" if metric == "effective_tokens" else ""), top)
    fixed = "; ".join(x for x in (
        f"τ={ref.tau:g}" if series_param == "alpha" and ref.tau is not None else "",
        f"α={ref.alpha:g}" if series_param == "tau" and ref.alpha is not None else "",
        f"d={ref.d:g}, k={ref.k:g}" if metric in ALPHA_DEPENDENT else "") if x)
    set_title(ax, f"{title} per class over images" + (f" ({fixed})" if fixed else ""), 9.0, loc="center")
    if len(series) > 1:
        sym = "α" if series_param == "alpha" else "τ"
        handles = [Patch(facecolor="0.85", edgecolor="0.2", hatch=hatches[i % len(hatches)], label=f"{sym}={v:g}")
                   for i, v in enumerate(series)]
        ax.legend(handles=handles, frameon=False, loc="upper right")
    stem = f"dist_{metric}"
    files = save(fig, out, stem, formats)
    return ReportFigure(stem, files, f"{title} per class", f"{meaning}. One point per image; boxes show the quartiles "
                        f"(under {SMALL_N} images: the points and a median tick only); "
                        "n = images with a value (scopes with no effective token have none)."
                        + (" Symmetric-log axis: linear near zero, logarithmic above, so small and large values both read."
                           if unit == "%" or metric == "effective_tokens" else ""))


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
    """A symmetric-log axis for shares (%) and token counts, linear otherwise; from zero to above the largest value."""
    if unit in SYMLOG:
        ax.set_yscale("symlog", linthresh=SYMLOG[unit], linscale=0.5)
        ax.set_ylim(bottom=0, top=max(top * 1.5, SYMLOG[unit] * 2))
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_ylim(bottom=0, top=top * 1.08 if top > 0 else 1)


def controls_figure(rows: Rows, ref: Reference, scopes, out: Path, formats) -> ReportFigure | None:
    """Per class at the reference point: the flip ratio beside its null and reseed controls (when the rows carry them)."""
    from matplotlib.patches import Patch

    if np.isnan(rows["flip_ratio_null"]).all() and np.isnan(rows["flip_ratio_reseed"]).all():
        return None
    base = point_mask(rows, ref)
    datr_scopes = [(s, c) for s, c in scopes if s != "encoder"]
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
    ax.set_xticks(range(len(datr_scopes)))
    ax.set_xticklabels([s for s, _ in datr_scopes])
    ax.set_xlim(-0.6, len(datr_scopes) - 0.4)
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
                        "inside its controls' range is what any displacement of that size, or another KMeans start, does.")


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
    enc_keep = point_mask(rows, ref, tau=False, alpha=False) & rows.select(scope="encoder")
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


def t_quantile(dof: int) -> float:
    """Two-sided 95% Student-t quantile (small image counts would make 1.96 too narrow)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def grid_figure(rows: Rows, ref: Reference, scopes, param: tuple[str, str], out: Path, formats) -> ReportFigure | None:
    """Mean ± 95% t-interval (over images) of each metric against one varied parameter, the others fixed."""
    name, symbol = param
    values = ref.grid.get(name) or []
    if len(values) < 2:
        return None
    fixed = {key: getattr(ref, key) for key in ("tau", "alpha", "d", "k") if key != name and getattr(ref, key) is not None}
    metrics = [(m, lab) for m, lab in GRID_METRICS if not np.isnan(rows[m]).all()]
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = new_canvas(2.5, 2.1, ncols=ncols, nrows=nrows)
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    axes = axes[:len(metrics)]
    span = (max(values) - min(values)) or 1.0
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        for si, (scope, cid) in enumerate(scopes):
            colour = to_unit(scope_colour(scope, cid))
            dodge = (si - (len(scopes) - 1) / 2) * 0.012 * span  # keeps the error bars of scopes apart
            sel_fixed = rows.select(scope=scope)
            for key, value in fixed.items():
                if scope == "encoder" and key in ("tau", "alpha"):
                    continue  # the encoder clustering has no tau/alpha
                sel_fixed &= rows.select(**{key: value})
            if scope == "encoder" and name in ("tau", "alpha"):
                data = rows[metric][sel_fixed]
                data = data[~np.isnan(data)]
                if data.size:
                    ax.axhline(data.mean(), color=colour, linestyle="--", linewidth=1, label="encoder")
                continue
            means, half = [], []
            for v in values:
                data = rows[metric][sel_fixed & rows.select(**{name: v})]
                data = data[~np.isnan(data)]
                means.append(data.mean() if data.size else np.nan)
                half.append(t_quantile(data.size - 1) * data.std(ddof=1) / np.sqrt(data.size) if data.size > 1 else 0.0)
            if np.isnan(means).all():
                continue
            ax.errorbar(np.asarray(values) + dodge, means, yerr=half, color=colour, marker="o", markersize=3,
                        linewidth=1.2, elinewidth=0.8, capsize=2, label=scope, markeredgecolor="0.3", markeredgewidth=0.3)
        ax.set_xlabel(symbol)
        ax.set_ylabel(label)
        ax.set_xticks(values)
        set_title(ax, label, 9.0, loc="center")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fit_legend(fig, handles, labels=labels, max_cols=7)
    fixed_text = ", ".join(f"{dict(GRID_PARAMS)[k].split()[-1]}={v:g}" for k, v in fixed.items())
    set_suptitle(fig, f"Metrics against {symbol} (mean ± 95% t-interval over images; {fixed_text})")
    stem = f"grid_{name}"
    files = save(fig, out, stem, formats)
    return ReportFigure(stem, files, f"Parameter grid: {symbol}",
                        f"Mean over images of each metric per scope as {symbol} varies, the other parameters at "
                        f"{fixed_text}; error bars are 95% Student-t intervals of the mean over images. The encoder clustering does not "
                        "depend on τ or α and is drawn dashed.")

