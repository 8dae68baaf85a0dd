"""The dataset-level report of a sweep: figures from the stored rows and one index.html.

`build_report(DIR)` reads DIR/rows/*.parquet, DIR/errors.parquet and DIR/run.json (and
lists DIR/figures/*/figures.json, the per-image figures, when present) and writes

    DIR/report/dist_<metric>.png      per-class distributions over images (flip ratio raw and
                                      processed, effective tokens, cosine distance, DATR shift)
    DIR/report/quality_vs_iou.png     clustering accuracy / NMI / ARI (and the gain over the
                                      encoder clustering) against the prompt's mask IoU, with
                                      Pearson and Spearman correlations (needs GT)
    DIR/report/grid_<param>.png       metric means against each parameter that the sweep varied
    DIR/report/summary.csv, .tex      the per-class table in the paper's form (mean ± std)
    DIR/report/summary_grid.csv       the means at every grid point
    DIR/report/index.html             one page, every link relative, inline CSS, no scripts

Nothing here reruns the analysis: the figures draw the stored per-image values; the
only numbers computed are summaries of them (means, spreads, correlations).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import ConfigError, DataError
from engine.palette import class_colour, scope_colour, to_unit

DISTRIBUTIONS = (
    ("flip_ratio", "Flip ratio (raw)", "Share of effective tokens whose aligned cluster differs from the encoder cluster", 100.0, "%"),
    ("flip_ratio_processed", "Flip ratio (processed)", "The same on the 3×3-filtered maps (alignment recomputed on them)", 100.0, "%"),
    ("effective_tokens", "Effective tokens", "Tokens whose mask weight W (max over kept masks, pooled to the 72×72 grid) is ≥ 0.5, of 5184", 1.0, ""),
    ("cos_distance", "Average cosine distance", "Mean over effective tokens of 1 − cos(F_j, A_j), A_j the attended query vector (the paper's measure)", 1.0, ""),
    ("datr_shift", "DATR shift", "Mean over effective tokens of 1 − cos(F_j, DATR(F)_j), how far the re-encoding moves a token", 1.0, ""),
)
ALPHA_DEPENDENT = {"flip_ratio", "flip_ratio_processed", "datr_shift"}  # the rest depend on tau only
QUALITY = (("accuracy", "Accuracy (matched)"), ("nmi", "NMI"), ("ari", "ARI"))
GRID_METRICS = (("flip_ratio", "flip ratio"), ("flip_ratio_processed", "flip ratio (processed)"),
                ("accuracy", "accuracy"), ("ari", "ARI"), ("datr_shift", "DATR shift"))
GRID_PARAMS = (("alpha", "α"), ("tau", "τ"), ("d", "PCA dims d"), ("k", "clusters k"))
TABLE_COLUMNS = (
    ("kept_queries", "masks", "{:.1f}"), ("effective_tokens", "effective tokens", "{:.0f}"),
    ("flip_ratio", "flip ratio", "{:.1%}"), ("flip_ratio_processed", "flip (processed)", "{:.1%}"),
    ("cos_distance", "cos distance", "{:.4f}"), ("datr_shift", "DATR shift", "{:.4f}"), ("iou", "mask IoU", "{:.3f}"),
    ("accuracy", "accuracy", "{:.3f}"), ("nmi", "NMI", "{:.3f}"), ("ari", "ARI", "{:.3f}"),
)


@dataclass
class ReportFigure:
    name: str
    files: list[str]  # relative to DIR/report
    title: str
    caption: str


@dataclass
class Rows:
    """The row table as numpy columns (nulls -> NaN for numbers, None for strings)."""

    columns: dict[str, np.ndarray]
    n: int

    @classmethod
    def from_table(cls, table) -> Rows:
        import pyarrow as pa

        cols = {}
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                cols[name] = np.array(column.to_pylist(), dtype=object)
            else:  # nulls become NaN through the float cast
                cols[name] = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        return cls(cols, table.num_rows)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def select(self, **where) -> np.ndarray:
        """Boolean row mask: column == value for each keyword (None matches null)."""
        keep = np.ones(self.n, dtype=bool)
        for name, value in where.items():
            col = self.columns[name]
            if value is None:
                keep &= np.array([v is None for v in col]) if col.dtype == object else np.isnan(col)
            elif col.dtype == object:
                keep &= col == value
            else:
                keep &= np.isclose(col, value)
        return keep

    def values(self, name: str) -> list:
        col = self.columns[name]
        if col.dtype == object:
            return list(dict.fromkeys(v for v in col if v is not None))
        return sorted(set(col[~np.isnan(col)].tolist()))


@dataclass
class Reference:
    """The grid point the per-class figures and the table use: the first of each grid list."""

    tau: float | None
    alpha: float | None
    d: float
    k: float
    grid: dict = field(default_factory=dict)  # param -> values present in the rows

    def label(self) -> str:
        parts = []
        if self.tau is not None:
            parts.append(f"τ={self.tau:g}")
        if self.alpha is not None:
            parts.append(f"α={self.alpha:g}")
        parts += [f"d={self.d:g}", f"k={self.k:g}"]
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Entry point


def build_report(sweep_dir: Path, echo=print, formats: tuple[str, ...] = ("png",)) -> Path:
    """Write DIR/report/ (figures, tables, index.html) from a sweep folder; returns the index.html path."""
    from engine.figures import FORMATS, STYLE

    sweep_dir = Path(sweep_dir)
    formats = tuple(dict.fromkeys(f.lower() for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"--formats: choose from {', '.join(FORMATS)}, got {', '.join(formats) or 'nothing'}")
    formats = ("png",) + tuple(f for f in formats if f != "png")  # the page shows PNGs; others are linked
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir}: no such sweep folder; give the --out folder of `datr sweep`")
    run = read_run_json(sweep_dir)
    table = read_rows_if_any(sweep_dir)
    errors = read_errors(sweep_dir)
    if table is None and not run and not errors:
        raise DataError(f"{sweep_dir}: no rows/, run.json or errors.parquet; run `datr sweep ... --out {sweep_dir}` first")
    out = sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("*.png")) + list(out.glob("*.pdf")) + list(out.glob("*.svg")):
        stale.unlink()  # a rerun must not leave figures of a grid that is gone

    rows = Rows.from_table(table) if table is not None else None
    figures: list[ReportFigure] = []
    notes: list[str] = []
    summary: list[dict] = []
    grid_summary: list[dict] = []
    ref = None
    if rows is not None:
        import matplotlib

        ref = reference_point(rows, run)
        scopes = scope_order(rows, run)
        with matplotlib.rc_context(STYLE):
            for metric, title, meaning, scale, unit in DISTRIBUTIONS:
                fig = distribution_figure(rows, ref, scopes, metric, title, meaning, scale, unit, out, formats)
                if fig is not None:
                    figures.append(fig)
            quality = quality_figure(rows, ref, scopes, out, formats)
            if quality is None:
                notes.append("Clustering quality against IoU needs ground truth (accuracy/NMI/ARI and IoU are empty).")
            else:
                figures.append(quality)
            grid_figs = [f for p in GRID_PARAMS if (f := grid_figure(rows, ref, scopes, p, out, formats)) is not None]
            if not grid_figs:
                notes.append("The sweep ran a single parameter point; no grid curves (give --alpha 0.3,0.5 or a "
                             "--clusters/--dims/--tau list to get them).")
            figures += grid_figs
        summary = summary_table(rows, ref, scopes)
        grid_summary = grid_table(rows, scopes)
        write_csv(out / "summary.csv", summary)
        write_csv(out / "summary_grid.csv", grid_summary)
        write_latex(out / "summary.tex", summary, ref)
    image_pages = find_image_pages(sweep_dir)
    index = out / "index.html"
    index.write_text(render_index(sweep_dir, run, rows, ref, figures, notes, summary, grid_summary, errors, image_pages),
                     encoding="utf-8")
    echo(f"drew {len(figures)} dataset figures, linked {len(image_pages)} per-image figure sets, listed {len(errors)} errors")
    return index


# ----------------------------------------------------------------------------------------------
# Reading


def read_run_json(sweep_dir: Path) -> dict:
    path = sweep_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err}); rerun the sweep or remove the file") from None


def read_rows_if_any(sweep_dir: Path):
    if not sorted((sweep_dir / "rows").glob("part-*.parquet")):
        return None
    from engine.store import read_rows

    try:
        return read_rows(sweep_dir)
    except OSError as err:
        raise DataError(f"{sweep_dir / 'rows'}: unreadable result shard ({err})") from None


def read_errors(sweep_dir: Path) -> list[dict]:
    path = sweep_dir / "errors.parquet"
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err})") from None


def find_image_pages(sweep_dir: Path) -> list[dict]:
    """Per-image figure sets under DIR/figures (their figures.json manifests), in name order."""
    pages = []
    for manifest in sorted((sweep_dir / "figures").glob("*/figures.json")):
        try:
            data = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        data["folder"] = manifest.parent.name
        pages.append(data)
    return pages


def reference_point(rows: Rows, run: dict) -> Reference:
    """First value of each grid list in run.json's config (falling back to the rows' smallest)."""
    analysis = (run.get("config") or {}).get("analysis") or {}
    grid = {"tau": rows.values("tau"), "alpha": rows.values("alpha"), "d": rows.values("d"), "k": rows.values("k")}

    def first(key: str, config_key: str):
        present = grid[key]
        for v in analysis.get(config_key) or []:
            if any(abs(v - p) < 1e-9 for p in present):
                return float(v)
        return present[0] if present else None

    return Reference(tau=first("tau", "taus"), alpha=first("alpha", "alphas"), d=first("d", "dims"), k=first("k", "ks"),
                     grid=grid)


def scope_order(rows: Rows, run: dict) -> list[tuple[str, float | None]]:
    """[(scope, class_id)] in the order encoder, global, prompts (config order), then any others."""
    prompts = list((run.get("config") or {}).get("prompts") or [])
    present = rows.values("scope")
    order = [s for s in ("encoder", "global") if s in present] + [p for p in prompts if p in present]
    order += [s for s in present if s not in order]
    out = []
    for scope in order:
        ids = rows["class_id"][rows.select(scope=scope)]
        ids = ids[~np.isnan(ids)]
        out.append((scope, int(ids[0]) if ids.size else None))
    return out


def point_mask(rows: Rows, ref: Reference, *, tau=True, alpha=True) -> np.ndarray:
    keep = rows.select(d=ref.d, k=ref.k)
    if tau and ref.tau is not None:
        keep &= rows.select(tau=ref.tau)
    if alpha and ref.alpha is not None:
        keep &= rows.select(alpha=ref.alpha)
    return keep


# ----------------------------------------------------------------------------------------------
# Figures


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, list(axes)


def save(fig, out: Path, stem: str, formats: tuple[str, ...]) -> list[str]:
    files = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=150)
        files.append(path.name)
    fig.clear()
    return files


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
    fig, (ax,) = new_figure(max(4.5, 1.1 * len(datr_scopes) * max(1, len(series)) ** 0.5 + 1.5), 3.4)
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
            box = ax.boxplot([data], positions=[x], widths=width * 0.85, patch_artist=True, showfliers=False,
                             medianprops={"color": "white" if sum(colour) < 1.2 else "black", "linewidth": 1.2})
            for patch in box["boxes"]:
                patch.set(facecolor=(*colour, 0.75), edgecolor="0.2", hatch=hatches[si % len(hatches)])
            ax.scatter(x + rng.uniform(-width * 0.25, width * 0.25, data.size), data, s=6, color="0.15", alpha=0.5,
                       linewidths=0, zorder=3)
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
    ax.set_ylim(bottom=0, top=top * 1.08 if top > 0 else 1)
    fixed = "; ".join(x for x in (
        f"τ={ref.tau:g}" if series_param == "alpha" and ref.tau is not None else "",
        f"α={ref.alpha:g}" if series_param == "tau" and ref.alpha is not None else "",
        f"d={ref.d:g}, k={ref.k:g}" if metric in ALPHA_DEPENDENT else "") if x)
    ax.set_title(f"{title} per class over images" + (f" ({fixed})" if fixed else ""))
    if len(series) > 1:
        sym = "α" if series_param == "alpha" else "τ"
        handles = [Patch(facecolor="0.85", edgecolor="0.2", hatch=hatches[i % len(hatches)], label=f"{sym}={v:g}")
                   for i, v in enumerate(series)]
        ax.legend(handles=handles, frameon=False, loc="upper right")
    stem = f"dist_{metric}"
    files = save(fig, out, stem, formats)
    return ReportFigure(stem, files, f"{title} per class", f"{meaning}. One point per image; boxes show the quartiles; "
                        "n = images with a value (scopes with no effective token have none).")


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
    fig, axes = new_figure(3.0 * len(panels), 3.4, ncols=len(panels))
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
        ax.set_title(f"{label}\n{fmt_corr(r, rho, n)}", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    fig.suptitle(f"Clustering quality vs segmentation IoU per image and prompt ({ref.label()})")
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
    fig, axes = new_figure(3.2 * ncols, 2.9 * nrows + 0.6, ncols=ncols, nrows=nrows)
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
        ax.set_title(label)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 7), frameon=False)
    fixed_text = ", ".join(f"{dict(GRID_PARAMS)[k].split()[-1]}={v:g}" for k, v in fixed.items())
    fig.suptitle(f"Metrics against {symbol} (mean ± 95% t-interval over images; {fixed_text})")
    stem = f"grid_{name}"
    files = save(fig, out, stem, formats)
    return ReportFigure(stem, files, f"Parameter grid: {symbol}",
                        f"Mean over images of each metric per scope as {symbol} varies, the other parameters at "
                        f"{fixed_text}; error bars are 95% Student-t intervals of the mean over images. The encoder clustering does not "
                        "depend on τ or α and is drawn dashed.")


# ----------------------------------------------------------------------------------------------
# Tables


def summary_table(rows: Rows, ref: Reference, scopes) -> list[dict]:
    """One row per scope at the reference point: mean, std and count of each metric over images."""
    table = []
    for scope, cid in scopes:
        keep = rows.select(scope=scope) & point_mask(rows, ref, tau=scope != "encoder", alpha=scope != "encoder")
        entry = {"scope": scope, "class_id": cid, "images": int(len(set(rows["image_id"][keep].tolist())))}
        for metric, _, _ in TABLE_COLUMNS:
            data = rows[metric][keep]
            data = data[~np.isnan(data)]
            entry[f"{metric}_mean"] = float(data.mean()) if data.size else None
            entry[f"{metric}_std"] = float(data.std(ddof=1)) if data.size > 1 else None
            entry[f"{metric}_n"] = int(data.size)
        n_tok = rows["n_tokens"][keep]
        entry["n_tokens"] = int(np.nanmax(n_tok)) if n_tok.size and not np.isnan(n_tok).all() else None
        table.append(entry)
    return table


def grid_table(rows: Rows, scopes) -> list[dict]:
    """Means at every (scope, tau, alpha, d, k) present."""
    keys = np.array([f"{s}|{t}|{a}|{d}|{k}" for s, t, a, d, k in
                     zip(rows["scope"], rows["tau"], rows["alpha"], rows["d"], rows["k"], strict=True)], dtype=object)
    rank = {s: i for i, (s, _) in enumerate(scopes)}
    out = []
    for key in dict.fromkeys(keys.tolist()):
        sel = keys == key
        scope, tau, alpha, d, k = key.split("|")
        entry = {"scope": scope, "tau": _num(tau), "alpha": _num(alpha), "d": int(float(d)), "k": int(float(k)),
                 "images": int(len(set(rows["image_id"][sel].tolist())))}
        for metric, _, _ in TABLE_COLUMNS:
            data = rows[metric][sel]
            data = data[~np.isnan(data)]
            entry[metric] = float(data.mean()) if data.size else None
        out.append(entry)
    out.sort(key=lambda e: (rank.get(e["scope"], 99), e["tau"] or -1, e["alpha"] or -1, e["d"], e["k"]))
    return out


def _num(text: str) -> float | None:
    value = float(text)
    return None if np.isnan(value) else value


def fmt_cell(fmt: str, mean, std=None) -> str:
    if mean is None:
        return "—"
    text = fmt.format(mean)
    if std is not None:
        text += " ± " + fmt.format(std).rstrip("%") + ("%" if fmt.endswith("%}") else "")
    return text


def write_csv(path: Path, table: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        if not table:
            return
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def write_latex(path: Path, table: list[dict], ref: Reference) -> None:
    """The per-class table as a booktabs tabular (means ± std over images)."""
    cols = [c for c in TABLE_COLUMNS if any(e[f"{c[0]}_mean"] is not None for e in table)]
    lines = [f"% sam3-datr per-class summary at {ref.label()}; mean ± std over images",
             "\\begin{tabular}{l" + "r" * (len(cols) + 1) + "}", "\\toprule",
             " & ".join(["scope", "images"] + [c[1] for c in cols]) + " \\\\", "\\midrule"]
    for e in table:
        cells = [e["scope"], str(e["images"])]
        for metric, _, fmt in cols:
            cells.append(fmt_cell(fmt, e[f"{metric}_mean"], e[f"{metric}_std"]).replace("%", "\\%").replace("±", "$\\pm$")
                         .replace("—", "--"))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# HTML

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:0 1.2em 3em;color:#222}
h1{font-size:1.5em;margin-top:1em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.banner{background:#b00020;color:#fff;padding:.8em 1em;font-weight:bold;border-radius:4px;margin:1em 0}
.warn{background:#fff4e5;border-left:4px solid #e69f00;padding:.5em .8em;margin:.5em 0}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#444;margin-top:.3em}
.gallery{display:flex;flex-wrap:wrap;gap:.6em}.gallery figure{width:270px;margin:0}.gallery img{width:270px}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #666;vertical-align:middle;margin-right:.3em}
code{background:#f4f4f4;padding:0 .2em}
"""


DEFINITIONS = """<dl>
<dt>Scope</dt><dd><i>encoder</i>: KMeans on the encoder tokens F (PCA to d, k clusters); <i>global</i>: on
DATR(F) = F + α·Σ softmax(F·Q/√C)·Q over the kept queries of all prompts (one softmax); a prompt name: the same
with that prompt's kept queries only. Kept = score ≥ τ.</dd>
<dt>Effective tokens E</dt><dd>Tokens whose mask weight (max over the scope's kept masks, pooled to the 72×72 grid)
is ≥ 0.5.</dd>
<dt>Flip ratio</dt><dd>Share of E whose DATR cluster, aligned to the encoder clusters by Hungarian matching over all
tokens, differs from the encoder cluster. <i>Processed</i>: both maps pass a 3×3 plurality filter first and are
re-aligned. No value when E is empty.</dd>
<dt>Cosine distance / DATR shift</dt><dd>Cosine distance (the paper's number) = mean over E of 1 − cos(F_j, A_j) with
A_j the attended query vector; DATR shift = mean over E of 1 − cos(F_j, DATR(F)_j).</dd>
<dt>Accuracy, NMI, ARI</dt><dd>Clustering against the GT downsampled to the token grid by majority vote;
accuracy after one-to-one matching of clusters to classes. <i>Mask IoU</i>: union of the prompt's kept masks
(probability ≥ 0.5) against its GT class on the 288×288 grid.</dd>
</dl>"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def is_simulated(run: dict) -> bool:
    source = run.get("source") or {}
    return bool(run.get("simulated") or source.get("simulated") or source.get("model") == "simulated"
                or (run.get("config") or {}).get("model") == "simulated")


def simulated_banner() -> str:
    return ("<div class=\"banner\" id=\"simulated\">SIMULATED — these results come from the simulated SAM3 source "
            "(features and decoder outputs derived from the ground truth), not from the SAM3 model. They test the "
            "pipeline; they say nothing about SAM3.</div>")


def figure_html(fig: ReportFigure, prefix: str = "") -> str:
    main = next((f for f in fig.files if f.endswith(".png")), fig.files[0])
    others = [f for f in fig.files if f != main]
    links = " ".join(f"<a href=\"{esc(prefix + f)}\">{esc(f.rsplit('.', 1)[1].upper())}</a>" for f in others)
    return (f"<figure id=\"{esc(fig.name)}\"><a href=\"{esc(prefix + main)}\"><img src=\"{esc(prefix + main)}\" "
            f"alt=\"{esc(fig.title)}\"></a><figcaption><b>{esc(fig.title)}.</b> {esc(fig.caption)}"
            + (f" Also as {links}." if links else "") + "</figcaption></figure>")


def kv_table(pairs: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th class=\"l\">{esc(k)}</th><td class=\"l\">{v if isinstance(v, Raw) else esc(v)}</td></tr>"
                   for k, v in pairs if v not in (None, "", [], {}))
    return f"<table>{rows}</table>"


class Raw(str):
    """Already-escaped HTML for kv_table."""


def run_facts(sweep_dir: Path, run: dict, rows: Rows | None, ref: Reference | None, errors: list[dict]) -> list[tuple[str, object]]:
    cfg = run.get("config") or {}
    analysis = cfg.get("analysis") or {}
    source = run.get("source") or {}
    backend = run.get("backend") or {}
    versions = run.get("versions") or {}
    stages = run.get("seconds_per_stage") or {}
    images = len(set(rows["image_id"].tolist())) if rows is not None else 0
    model = source.get("model") or cfg.get("model")
    if cfg.get("checkpoint"):
        model = f"{model} (checkpoint {cfg['checkpoint']})"
    return [
        ("run folder", str(sweep_dir.resolve())),
        ("status", run.get("status") or "unknown (no run.json)"),
        ("started / finished", " / ".join(x for x in (run.get("started"), run.get("finished")) if x)),
        ("model / source", model),
        ("source note", source.get("note")),
        ("dataset", " ".join(str(x) for x in (cfg.get("dataset"), f"split {cfg['split']}" if cfg.get("split") else None,
                                              f"mode {cfg['mode']}" if cfg.get("mode") else None) if x)),
        ("prompts", ", ".join(cfg.get("prompts") or [])),
        ("images with results", images),
        ("items skipped with errors", len(errors)),
        ("device", " ".join(str(x) for x in (run.get("device"), f"({run['device_name']})" if run.get("device_name") else None) if x)),
        ("backend", f"{backend.get('used')} — {backend.get('reason')}" if backend else None),
        ("parameter grid", ", ".join(f"{k}={analysis[k]}" for k in ("taus", "alphas", "dims", "ks") if k in analysis)),
        ("clustering", ", ".join(f"{k}={analysis[k]}" for k in ("n_init", "max_iter", "tol", "seed", "effective_threshold")
                                  if k in analysis)),
        ("figures drawn at", ref.label() if ref is not None else None),
        ("git commit", run.get("git_commit")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
        ("seconds per stage", ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if isinstance(v, (int, float)))),
        ("results", Raw(" ".join(f"<a href=\"{esc(href)}\">{esc(label)}</a>" for href, label in
                                 (("../run.json", "run.json"), ("../errors.parquet", "errors.parquet"), ("../rows/", "rows/"))
                                 if (sweep_dir / href[3:]).exists()))),
    ]


def summary_html(summary: list[dict], ref: Reference) -> str:
    cols = [c for c in TABLE_COLUMNS if any(e[f"{c[0]}_mean"] is not None for e in summary)]
    head = "<tr><th class=\"l\">scope</th><th>images</th>" + "".join(f"<th>{esc(label)}</th>" for _, label, _ in cols) + "</tr>"
    body = []
    for e in summary:
        swatch = ""
        if e["class_id"] is not None:
            r, g, b = class_colour(e["class_id"])
            swatch = f"<span class=\"swatch\" style=\"background:rgb({r},{g},{b})\"></span>"
        cells = [f"<td class=\"l\">{swatch}{esc(e['scope'])}</td>", f"<td>{e['images']}</td>"]
        for metric, _, fmt in cols:
            text = fmt_cell(fmt, e[f"{metric}_mean"], e[f"{metric}_std"])
            if metric == "effective_tokens" and e["n_tokens"] and e[f"{metric}_mean"] is not None:
                text += f" / {e['n_tokens']}"
            cells.append(f"<td>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<p>Mean ± standard deviation over images at {esc(ref.label())} (the paper reports one image: masks, "
            "effective tokens out of 5184, flip ratio, average cosine distance). A dash means no image had a value "
            "(e.g. a class with no kept mask has no effective token and so no flip ratio).</p>"
            f"<table>{head}{''.join(body)}</table><p>Also as <a href=\"summary.csv\">CSV</a> and "
            "<a href=\"summary.tex\">LaTeX</a>; means at every grid point in <a href=\"summary_grid.csv\">summary_grid.csv"
            "</a>.</p>")


def grid_html(grid_summary: list[dict]) -> str:
    cols = [c for c in TABLE_COLUMNS if any(e[c[0]] is not None for e in grid_summary)]
    head = ("<tr><th class=\"l\">scope</th><th>τ</th><th>α</th><th>d</th><th>k</th><th>images</th>"
            + "".join(f"<th>{esc(label)}</th>" for _, label, _ in cols) + "</tr>")
    body = []
    for e in grid_summary:
        cells = [f"<td class=\"l\">{esc(e['scope'])}</td>"] + [f"<td>{'—' if e[k] is None else f'{e[k]:g}'}</td>"
                                                               for k in ("tau", "alpha", "d", "k")]
        cells.append(f"<td>{e['images']}</td>")
        cells += [f"<td>{esc(fmt_cell(fmt, e[m]))}</td>" for m, _, fmt in cols]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def errors_html(errors: list[dict], limit: int = 200) -> str:
    if not errors:
        return "<p>No item was skipped.</p>"
    rows = "".join(f"<tr><td class=\"l\">{esc(e.get('image_id'))}</td><td class=\"l\">{esc(e.get('path'))}</td>"
                   f"<td class=\"l\">{esc(e.get('error'))}</td></tr>" for e in errors[:limit])
    more = f"<p>{len(errors) - limit} more in errors.parquet.</p>" if len(errors) > limit else ""
    return (f"<p class=\"warn\">{len(errors)} item(s) were skipped; their images have no rows.</p><table><tr>"
            f"<th class=\"l\">image</th><th class=\"l\">path</th><th class=\"l\">error</th></tr>{rows}</table>{more}")


def dataset_clustering_html(sweep_dir: Path) -> str:
    """The cluster-vs-class contingency and purity of DIR/dataset_clustering.json (written by the sweep)."""
    path = sweep_dir / "dataset_clustering.json"
    if not path.is_file():
        return ("<p>Not computed for this sweep (run <code>datr sweep ... --dataset-sample N</code> to cluster a "
                "reservoir sample of tokens from all images).</p>")
    try:
        results = json.loads(path.read_text()).get("results", [])
    except (json.JSONDecodeError, OSError) as err:
        return f"<p class=\"warn\">{esc(path.name)} is unreadable: {esc(err)}</p>"
    parts = []
    for res in results:
        head = (f"<h3>d = {res['d']}, k = {res['k']}: {res['tokens']} tokens sampled from {res['images']} images "
                f"({esc(res.get('backend'))})</h3>")
        facts = [("purity", res.get("purity")), ("matched accuracy", res.get("accuracy")), ("NMI", res.get("nmi")),
                 ("ARI", res.get("ari")), ("explained variance (d)", res.get("explained_variance_ratio"))]
        line = ", ".join(f"{name} {'—' if v is None else f'{v:.3f}'}" for name, v in facts)
        table = ""
        if res.get("contingency"):
            names = res.get("class_names") or [str(i) for i in range(len(res["contingency"][0]))]
            hrow = "<tr><th class=\"l\">cluster</th><th>tokens</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "<th>purity</th></tr>"
            rows = []
            for c, counts in enumerate(res["contingency"]):
                purity = (res.get("cluster_purity") or [None] * (c + 1))[c]
                rows.append(f"<tr><td class=\"l\">{c}</td><td>{res['sizes'][c]}</td>" + "".join(f"<td>{v}</td>" for v in counts)
                            + f"<td>{'—' if purity is None else f'{purity:.3f}'}</td></tr>")
            table = f"<table>{hrow}{''.join(rows)}</table>"
        parts.append(head + f"<p>{esc(line)}</p>" + table)
    return "".join(parts) or "<p>No results in dataset_clustering.json.</p>"


def image_pages_html(pages: list[dict]) -> str:
    if not pages:
        return ("<p>No per-image figures in this sweep folder (run <code>datr sweep ... --figures N</code> or "
                "<code>datr analyze</code> to draw them).</p>")
    parts = []
    for p in pages:
        folder = f"../figures/{p['folder']}/"
        thumbs = []
        for f in p.get("figures", []):
            png = next((x for x in f["files"] if x.endswith(".png")), None)
            if png is None:
                continue
            thumbs.append(f"<figure><a href=\"{esc(folder + png)}\"><img src=\"{esc(folder + png)}\" alt=\"{esc(f['title'])}\" "
                          f"loading=\"lazy\"></a><figcaption>{esc(f['paper'])}: {esc(f['title'])}</figcaption></figure>")
        parts.append(f"<h3>{esc(p.get('image_id'))} — <a href=\"{esc(folder + 'index.html')}\">all figures with captions</a>"
                     f"</h3><div class=\"gallery\">{''.join(thumbs)}</div>")
    return "".join(parts)


def render_index(sweep_dir: Path, run: dict, rows: Rows | None, ref: Reference | None, figures: list[ReportFigure],
                 notes: list[str], summary: list[dict], grid_summary: list[dict], errors: list[dict], pages: list[dict]) -> str:
    title = f"sam3-datr report — {sweep_dir.resolve().name}"
    body = [f"<h1>{esc(title)}</h1>"]
    if is_simulated(run):
        body.append(simulated_banner())
    if run.get("status") not in (None, "complete"):
        body.append(f"<p class=\"warn\">run.json status: {esc(run.get('status'))} — results may be partial.</p>")
    if not run:
        body.append("<p class=\"warn\">No run.json in this folder: the model, parameters and versions are unknown.</p>")
    body.append("<h2>Run</h2>" + kv_table(run_facts(sweep_dir, run, rows, ref, errors)))
    if rows is None:
        body.append("<p class=\"warn\">No result rows (rows/*.parquet): nothing to summarise.</p>")
    else:
        by_name = {f.name: f for f in figures}
        body.append("<h2>Per-class summary</h2>" + summary_html(summary, ref))
        body.append("<h2>Per-class distributions</h2>")
        body += [figure_html(by_name[f"dist_{m}"]) for m, *_ in DISTRIBUTIONS if f"dist_{m}" in by_name]
        body.append("<h2>Clustering quality vs segmentation</h2>")
        body += [figure_html(by_name["quality_vs_iou"])] if "quality_vs_iou" in by_name else []
        body.append("<h2>Parameter grid</h2>")
        body += [figure_html(f) for f in figures if f.name.startswith("grid_")]
        if len(grid_summary) > len(summary):
            body.append(grid_html(grid_summary))
        body += [f"<p class=\"warn\">{esc(n)}</p>" for n in notes]
    body.append("<h2>Dataset-level structural clustering</h2>" + dataset_clustering_html(sweep_dir))
    body.append("<h2>Definitions</h2>" + DEFINITIONS)
    body.append("<h2>Per-image figures</h2>" + image_pages_html(pages))
    body.append("<h2>Errors</h2>" + errors_html(errors))
    body.append(f"<p style=\"color:#777;font-size:.8em\">Written {esc(dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'))} "
                "by <code>datr report</code>. Definitions of every metric: see the project README.</p>")
    return page(title, body)


def write_image_page(folder: Path) -> Path:
    """folder/index.html: one image's figures with captions, from its figures.json."""
    data = json.loads((Path(folder) / "figures.json").read_text())
    title = f"sam3-datr figures — {data['image_id']}"
    body = [f"<h1>{esc(title)}</h1>"]
    if data.get("simulated"):
        body.append(simulated_banner())
    body.append(f"<p>Clustering at PCA d={data['d']}, k={data['k']}. Cluster colours follow the ground-truth class each "
                "encoder cluster overlaps most (display only)" + ("" if data.get("has_gt") else "; this image has no GT, so "
                "clusters use neutral colours") + ".</p>")
    for f in data["figures"]:
        body.append(figure_html(ReportFigure(f["name"], f["files"], f"{f['paper']} — {f['title']}", f["caption"])))
    path = Path(folder) / "index.html"
    path.write_text(page(title, body), encoding="utf-8")
    return path
