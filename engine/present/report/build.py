"""The dataset-level report of a sweep: figures from the stored rows and one index.html.

`build_report(DIR)` reads DIR/rows/*.parquet, DIR/errors.parquet and DIR/run.json (and
lists DIR/figures/*/figures.json, the per-image figures, when present) and writes

    DIR/report/dist_<metric>.png      per-class distributions over images (flip ratio raw and
                                      processed, effective tokens, cosine distance, DATR shift)
    DIR/report/quality_vs_iou.png     clustering accuracy / NMI / ARI (and the gain over the
                                      encoder clustering) against the prompt's mask IoU, with
                                      Pearson and Spearman correlations (needs GT)
    DIR/report/grid_<param>.png       medians (95% bootstrap intervals) against each parameter the sweep varied:
                                      each scope's flip ratio beside its controls, then the other metrics
    DIR/report/dist_flip_controls.png the flip ratio beside its null and reseed controls (rows that carry them)
    DIR/report/summary.csv, .tex      the per-class table in the paper's form (median [IQR]; the CSV also
                                      has means and standard deviations)
    DIR/report/images.html, images_by_<column>.html, images.csv
                                      the per-image table, one page per sort order
    DIR/report/summary_grid.csv       the means at every grid point
    DIR/report/index.html             one page, every link relative, inline CSS, no scripts: key
                                      findings first (engine.present.report.story)

Each per-image figure page (DIR/figures/<id>/index.html) is rewritten to link back here.

Nothing here reruns the analysis: the figures draw the stored per-image values; the
only numbers computed are summaries of them (medians, quartiles, bootstrap intervals, correlations). The pieces:
rows (reading), plots (figures), tables (summary tables), story (key findings, per-image pages),
page (the HTML).
"""

from __future__ import annotations

from pathlib import Path

from engine.analysis.effects import dataset_effects, write_effects_csv
from engine.core.errors import DataError
from engine.present.html import ReportFigure, write_image_page
from engine.present.provenance import run_is_simulated
from engine.present.report.curves import GRID_PARAMS, grid_figure
from engine.present.report.page import render_index
from engine.present.report.plots import (
    DISTRIBUTIONS,
    controls_figure,
    distribution_figure,
    quality_figure,
)
from engine.present.report.rows import (
    Reference,
    Rows,
    find_image_pages,
    read_errors,
    read_rows_if_any,
    reference_point,
    scope_order,
)
from engine.present.report.story import write_image_pages
from engine.present.report.tables import grid_table, image_table, summary_table, write_csv, write_latex
from engine.present.style import STYLE, check_formats
from engine.run.record import read_run_json


def build_report(sweep_dir: Path, echo=print, formats: tuple[str, ...] = ("png",)) -> Path:
    """Write DIR/report/ (figures, tables, index.html) from a sweep folder; returns the index.html path."""
    sweep_dir = Path(sweep_dir)
    formats = check_formats(formats)
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
    for stale in list(out.glob("*.png")) + list(out.glob("*.pdf")) + list(out.glob("*.svg")) + list(out.glob("images*.html")):
        stale.unlink()  # a rerun must not leave figures of a grid that is gone

    rows = Rows.from_table(table) if table is not None else None
    simulated = run_is_simulated(run)
    figures: list[ReportFigure] = []
    notes: list[str] = []
    summary: list[dict] = []
    grid_summary: list[dict] = []
    images: list[dict] = []
    effects: list[dict] = []
    ref = None
    if rows is not None:
        ref = reference_point(rows, run)
        scopes = scope_order(rows, run)
        echo(f"report: drawing the dataset figures of {rows.n} rows ...")
        figures, notes = draw_dataset_figures(rows, ref, scopes, out, formats)
        images = image_table(rows, ref, scopes)
        write_csv(out / "images.csv", images, simulated=simulated)
        write_image_pages(out, sweep_dir, images, sweep_dir.resolve().name, simulated=simulated)
        summary = summary_table(rows, ref, scopes)
        grid_summary = grid_table(rows, scopes)
        write_csv(out / "summary.csv", summary, simulated=simulated)
        write_csv(out / "summary_grid.csv", grid_summary, simulated=simulated)
        write_latex(out / "summary.tex", summary, ref, simulated=simulated)
        effects = dataset_effects(rows)
        write_effects_csv(out / "effects.csv", effects)  # exactly the contract's columns; the pages say SIMULATED
    image_pages = find_image_pages(sweep_dir)
    index = out / "index.html"
    index.write_text(render_index(sweep_dir, run, rows, ref, figures, notes, summary, grid_summary, errors, image_pages,
                                  images, effects), encoding="utf-8")
    for p in image_pages:  # now that the report is there, each figure page links back to it
        write_image_page(sweep_dir / "figures" / p["folder"])
    echo(f"drew {len(figures)} dataset figures, linked {len(image_pages)} per-image figure sets, listed {len(errors)} errors")
    return index


def draw_dataset_figures(rows: Rows, ref: Reference, scopes, out: Path, formats: tuple[str, ...]) -> tuple[list[ReportFigure], list[str]]:
    """Every dataset figure the rows allow, and a note for each kind that could not be drawn."""
    import matplotlib

    figures: list[ReportFigure] = []
    notes: list[str] = []
    with matplotlib.rc_context(STYLE):
        for metric, title, meaning, scale, unit in DISTRIBUTIONS:
            fig = distribution_figure(rows, ref, scopes, metric, title, meaning, scale, unit, out, formats)
            if fig is not None:
                figures.append(fig)
        if (controls := controls_figure(rows, ref, scopes, out, formats)) is not None:
            figures.append(controls)
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
    return figures, notes
