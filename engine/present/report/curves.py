"""The parameter-grid curves: medians over images against one varied parameter, with 95% bootstrap intervals.

The report's statistic (the median over images) at every grid value, its interval a
seeded percentile bootstrap over images (shares in %, clipped to [0, 100] %). First one
panel per scope with the flip ratio beside its null and reseed controls on one shared
percent axis, then the effects (percentage points) and the other metrics, a line per
scope. Only summaries of stored values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.core.choices import ENCODER
from engine.present.html import ReportFigure
from engine.present.layout import fit_legend, set_suptitle, set_title
from engine.present.palette import scope_colour, to_unit
from engine.present.report.rows import Reference, Rows
from engine.present.style import new_canvas, save

GRID_PARAMS = (("alpha", "α"), ("tau", "τ"), ("d", "PCA dims d"), ("k", "clusters k"))
# (column, title, kind): a share (%, symmetric-log, within [0, 100]), a difference of shares (percentage points,
# linear, zero marked) or a plain number
GRID_METRICS = (("effect_instability", "effect vs KMeans instability", "pp"), ("effect_null", "effect vs null", "pp"),
                ("flip_ratio_processed", "flip ratio (processed)", "share"), ("accuracy", "accuracy", "plain"),
                ("ari", "ARI", "plain"), ("datr_shift", "DATR shift", "plain"))
SCALE = {"share": 100.0, "pp": 100.0, "plain": 1.0}
YLABEL = {"share": "% of effective tokens", "pp": "percentage points"}
# the flip ratio and its controls in each scope's panel: (column, label, line style, colour: None = the scope's)
CONTROL_LINES = (("flip_ratio", "flip ratio", "-", None), ("flip_ratio_null", "null control", "--", "black"),
                 ("flip_ratio_reseed", "reseed control", ":", "0.45"))
RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def bootstrap_median(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """(median, 2.5th, 97.5th percentile of the medians of RESAMPLES resamples of the values with replacement)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return np.nan, np.nan, np.nan
    median = float(np.median(values))
    if values.size == 1:
        return median, median, median
    medians = np.empty(RESAMPLES)
    step = max(1, 2_000_000 // values.size)  # resamples per chunk: a bounded working set on large datasets
    for start in range(0, RESAMPLES, step):
        count = min(step, RESAMPLES - start)
        medians[start:start + count] = np.median(values[rng.integers(0, values.size, (count, values.size))], axis=1)
    low, high = np.percentile(medians, (2.5, 97.5))
    return median, float(low), float(high)


def curve(rows: Rows, keep: np.ndarray, metric: str, name: str, values, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Medians and (2, n) interval half-widths of `metric` (in its kind's unit) at each value of the parameter `name`."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    stats = np.array([bootstrap_median(rows[metric][keep & rows.select(**{name: v})] * SCALE[kind], rng) for v in values])
    if kind == "share":
        stats = np.clip(stats, 0.0, 100.0)
    return stats[:, 0], np.abs(np.stack([stats[:, 0] - stats[:, 1], stats[:, 2] - stats[:, 0]]))


def scope_rows(rows: Rows, scope: str, fixed: dict) -> np.ndarray:
    """The rows of a scope at the fixed parameters (the encoder clustering has no tau or alpha)."""
    keep = rows.select(scope=scope)
    for key, value in fixed.items():
        if not (scope == ENCODER and key in ("tau", "alpha")):
            keep &= rows.select(**{key: value})
    return keep


def controls_panel(ax, rows: Rows, keep: np.ndarray, name: str, values, colour, span: float) -> float:
    """One scope's flip ratio and its controls (%) against the varied parameter; returns the largest value drawn."""
    top = 0.0
    for i, (metric, label, style, line_colour) in enumerate(CONTROL_LINES):
        medians, half = curve(rows, keep, metric, name, values, "share")
        if np.isnan(medians).all():
            continue
        x = np.asarray(values, dtype=float) + (i - 1) * 0.015 * span  # keeps the three intervals apart
        ax.errorbar(x, medians, yerr=half, color=line_colour or colour, linestyle=style, marker="os^"[i], markersize=3,
                    linewidth=1.2, elinewidth=0.8, capsize=2, label=label)
        top = max(top, float(np.nanmax(medians + half[1])))
    return top


def metric_panel(ax, rows: Rows, scopes, fixed: dict, name: str, values, metric: str, kind: str, span: float) -> float:
    """One metric, a line per scope (the encoder dashed where it does not depend on the parameter)."""
    top = 0.0
    if kind == "pp":
        ax.axhline(0.0, color="0.6", linewidth=0.8)
    for si, (scope, cid) in enumerate(scopes):
        colour = to_unit(scope_colour(scope, cid))
        keep = scope_rows(rows, scope, fixed)
        if scope == ENCODER and name in ("tau", "alpha"):
            data = rows[metric][keep] * SCALE[kind]
            if (~np.isnan(data)).any():
                ax.axhline(float(np.nanmedian(data)), color=colour, linestyle="--", linewidth=1, label="encoder")
            continue
        medians, half = curve(rows, keep, metric, name, values, kind)
        if np.isnan(medians).all():
            continue
        x = np.asarray(values, dtype=float) + (si - (len(scopes) - 1) / 2) * 0.012 * span
        ax.errorbar(x, medians, yerr=half, color=colour, marker="o", markersize=3, linewidth=1.2, elinewidth=0.8,
                    capsize=2, label=scope, markeredgecolor="0.3", markeredgewidth=0.3)
        top = max(top, float(np.nanmax(medians + half[1])))
    return top


def grid_figure(rows: Rows, ref: Reference, scopes, param: tuple[str, str], out: Path, formats) -> ReportFigure | None:
    """Medians with 95% bootstrap intervals over images against one varied parameter, the others at the reference."""
    from engine.present.report.plots import value_axis

    name, symbol = param
    values = ref.grid.get(name) or []
    if len(values) < 2:
        return None
    fixed = {key: getattr(ref, key) for key in ("tau", "alpha", "d", "k") if key != name and getattr(ref, key) is not None}
    datr = [(s, c) for s, c in scopes if s != ENCODER and not np.isnan(rows["flip_ratio"][scope_rows(rows, s, fixed)]).all()]
    metrics = [m for m in GRID_METRICS if not np.isnan(rows[m[0]]).all()]
    panels = len(datr) + len(metrics)
    if not panels:
        return None
    ncols = min(3, panels)
    fig, axes = new_canvas(2.3, 1.75, ncols=ncols, nrows=-(-panels // ncols))
    for ax in axes[panels:]:
        ax.set_visible(False)
    span = (max(values) - min(values)) or 1.0
    tops = [controls_panel(ax, rows, scope_rows(rows, s, fixed), name, values, to_unit(scope_colour(s, c)), span)
            for ax, (s, c) in zip(axes, datr, strict=False)]
    for ax, (scope, _) in zip(axes, datr, strict=False):
        value_axis(ax, "%", max(tops))
        finish_panel(ax, f"{scope}: flip ratio and controls", symbol, "% of effective tokens", values)
    for ax, (metric, label, kind) in zip(axes[len(datr):], metrics, strict=False):
        top = metric_panel(ax, rows, scopes, fixed, name, values, metric, kind, span)
        if kind == "share":
            value_axis(ax, "%", top)
        finish_panel(ax, label, symbol, YLABEL.get(kind, label), values)
    grid_legend(fig, axes[:panels])
    fixed_text = ", ".join(f"{dict(GRID_PARAMS)[k].split()[-1]}={v:g}" for k, v in fixed.items())
    set_suptitle(fig, f"Medians against {symbol} with 95% bootstrap intervals over images ({fixed_text})")
    files = save(fig, out, f"grid_{name}", formats)
    return ReportFigure(f"grid_{name}", files, f"Parameter grid: {symbol}",
                        f"The median over images as {symbol} varies, the other parameters at {fixed_text}; error bars are "
                        f"95% percentile-bootstrap intervals of the median ({RESAMPLES} resamples of the images, seeded), "
                        "shares in % and within [0, 100] %. One panel per scope puts its flip ratio (one seed's) beside its "
                        "null control (dashed) and reseed control (dotted) on one shared axis. The effects (seed ensembles: "
                        "the per-image flip_between minus flip_within, or minus flip_null_between) are in percentage "
                        "points around 0: a scope moves the clustering beyond KMeans instability and beyond a random "
                        "displacement where both stand above 0. The encoder clustering does not depend on τ or α and is "
                        "drawn dashed in the other panels.")


def finish_panel(ax, title: str, symbol: str, ylabel: str, values) -> None:
    set_title(ax, title, 8.0, loc="center")
    ax.set_xlabel(symbol)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xticks(values, [f"{v:g}" for v in values])


def grid_legend(fig, axes) -> None:
    """One legend for every panel: what the line styles of the controls mean, then each scope's colour once."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.3", linestyle=style, marker="os^"[i], markersize=3,
                      label=f"{label} (in the scope's colour)" if colour is None else label)
               for i, (_, label, style, colour) in enumerate(CONTROL_LINES)]
    labels = [h.get_label() for h in handles]
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels and label not in {line[1] for line in CONTROL_LINES}:
                handles.append(handle)
                labels.append(label)
    fit_legend(fig, handles, labels=labels, max_cols=5)
