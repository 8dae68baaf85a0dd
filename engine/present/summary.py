"""The per-scope summary of a sweep in the terminal, and the per-image CSV.

The terminal prints the report's statistic: the median over images with its interquartile
range, [Q1–Q3] (engine.present.report.tables.quartiles), at every grid point. The table
fits the terminal: grid keys that do not vary go into the title, shares are in %, the
ranges go first when it is too wide, then whole columns (named under the table), least
important first; a number is never cut. A simulated run says so on its first line, and
the paper's single-image column is left out of it (with the reason).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.core.choices import GLOBAL
from engine.data.classes import UDD5_CLASSES
from engine.present.paper import PAPER_NOTE, TOTAL_TOKENS, paper_scope
from engine.present.provenance import FEW_TOKENS, PAPER_HIDDEN, PAPER_LEGEND, PAPER_SEED, SIMULATED_LINE

SUMMARY_COLUMNS = ("kept_queries", "effective_tokens", "flip_ratio", "flip_ratio_processed", "flip_ratio_null",
                   "flip_ratio_null_processed", "flip_ratio_reseed", "cos_distance", "datr_shift", "iou", "accuracy",
                   "nmi", "ari")
GRID_KEYS = ("tau", "alpha", "d", "k")
# (header, format); a share is printed in %, as the report does
DISPLAY = {
    "images": ("images", "{:.0f}"), "kept_queries": ("masks", "{:.1f}"), "effective_tokens": ("eff.tok", "{:.0f}"),
    "flip_ratio": ("flip", "{:.1%}"), "flip_ratio_processed": ("flip proc", "{:.1%}"),
    "flip_ratio_null": ("null", "{:.1%}"), "flip_ratio_null_processed": ("null proc", "{:.1%}"),
    "flip_ratio_reseed": ("reseed", "{:.1%}"), "cos_distance": ("cos dist", "{:.4f}"), "datr_shift": ("shift", "{:.4f}"),
    "iou": ("IoU", "{:.3f}"), "accuracy": ("acc", "{:.3f}"), "nmi": ("NMI", "{:.3f}"), "ari": ("ARI", "{:.3f}"),
}
# left out first when the table is too wide for the terminal (after the ranges); then any column from the right
DROP_ORDER = ("datr_shift", "flip_ratio_null_processed", "ari", "flip_ratio_processed", "kept_queries",
              "cos_distance", "nmi", "accuracy", "iou")
PAPER_COLUMN = "paper (one image, one seed)"
SHARES = ("flip_ratio", "flip_ratio_null", "flip_ratio_reseed")  # the columns whose ranges stay longest


def summarize(rows: pa.Table) -> pa.Table:
    """Median, Q1 and Q3 over images of each metric per (scope, tau, alpha, d, k), nulls left out; the image count.

    Columns: scope, tau, alpha, d, k, images, then <metric>_median, <metric>_q1, <metric>_q3 per metric present.
    """
    from engine.present.report.rows import Rows
    from engine.present.report.tables import quartiles

    table = Rows.from_table(rows)
    present = [c for c in SUMMARY_COLUMNS if c in rows.column_names]
    order = {s: i for i, s in enumerate(dict.fromkeys(rows.column("scope").to_pylist()))}
    points = {}
    for i in range(table.n):
        key = (table["scope"][i], *(table[k][i] for k in GRID_KEYS))
        points.setdefault(tuple(None if isinstance(v, float) and np.isnan(v) else v for v in key), []).append(i)
    records = []
    for key in sorted(points, key=lambda k: (order[k[0]], *(-1.0 if v is None else v for v in k[1:]))):
        sel = np.array(points[key])
        record = {"scope": key[0], **{k: v for k, v in zip(GRID_KEYS, key[1:], strict=True)},
                  "images": len(set(table["image_id"][sel].tolist()))}
        for metric in present:
            q1, median, q3 = quartiles(table[metric][sel])
            record.update({f"{metric}_median": median, f"{metric}_q1": q1, f"{metric}_q3": q3})
        records.append(record)
    return pa.Table.from_pylist(records)


def paper_name(scope: str, class_id: int | None) -> str | None:
    """The paper's name for a scope: `global`, or a class scope's UDD5 class name (its prompt may differ)."""
    if scope == GLOBAL:
        return scope
    if class_id is not None and 0 <= class_id < len(UDD5_CLASSES):
        return UDD5_CLASSES[class_id]
    return None


def with_paper_column(table: pa.Table, rows: pa.Table) -> pa.Table:
    """The summary with the paper's single-image numbers beside each scope ("-" where the paper has none).

    Class scopes are matched by their GT class (rows' class_id), not by the prompt's text.
    """
    class_of = dict(zip(rows.column("scope").to_pylist(), rows.column("class_id").to_pylist(), strict=True))
    cells = []
    for scope in table.column("scope").to_pylist():
        paper = paper_scope(paper_name(scope, class_of.get(scope)) or "")
        if paper is None:
            cells.append("-")
            continue
        masks = "-" if paper.masks is None else f"{paper.masks}"
        cells.append(f"{paper.flip_ratio:.1%} {paper.cos_distance:.4f} {paper.effective_tokens}/{TOTAL_TOKENS} {masks}")
    return table.append_column(PAPER_COLUMN, pa.array(cells, type=pa.string()))


def summary_text(rows: pa.Table, title: str, *, simulated: bool, paper: bool = False, width: int | None = None) -> str:
    """The summary of a sweep's rows as the terminal shows it (`datr show`, and after a sweep, analyze or demo)."""
    table = summarize(rows)
    notes = []
    if paper and simulated:
        notes.append(PAPER_HIDDEN)
    elif paper:
        table = with_paper_column(table, rows)
        notes.append(PAPER_NOTE)
    return render_summary(table, title, width=width, simulated=simulated, notes=notes)


def render_summary(table: pa.Table, title: str, *, width: int | None = None, simulated: bool = False,
                   notes: list[str] | None = None) -> str:
    """The summary as a text table no wider than `width` (default: the terminal's width)."""
    import shutil
    from io import StringIO

    from rich.console import Console

    width = width or shutil.get_terminal_size((100, 24)).columns
    records = table.to_pylist()
    fixed, varied = split_grid(records)
    counts = {r["images"] for r in records}
    facts = [f"{key}={value:g}" for key, value in fixed.items()] + ([f"{counts.pop()} images"] if len(counts) == 1 else [])
    if facts:
        title += "\n" + ", ".join(facts)
    metrics = [name for name in table.column_names
               if (name.endswith("_median") and any(r[name] is not None for r in records)) or name == PAPER_COLUMN]
    out, ranges, dropped = fitted_table(records, title, varied, (["images"] if counts else []) + metrics, width)
    console = Console(file=StringIO(), width=width, color_system=None, highlight=False, markup=False)
    if simulated:
        console.print(SIMULATED_LINE)
    console.print(out)
    console.print(("median [interquartile range]" if ranges else "median") + " over images, as in the report"
                  + ("" if ranges else " (the ranges left out to fit; the report has them)"))
    if dropped:
        console.print(f"left out to fit {width} columns: {', '.join(dropped)} (the report has them)")
    if any(m.startswith(("flip_ratio_null", "flip_ratio_reseed")) for m in metrics):
        console.print("flip, null, reseed: one seed's numbers (best of n_init at --seed) in % of effective tokens; null and "
                      "reseed are the flip ratio's single-draw controls")
    else:
        console.print("flip: % of effective tokens (these rows carry no null / reseed controls)")
    if PAPER_COLUMN in metrics and PAPER_COLUMN not in [c for c in dropped]:
        console.print(PAPER_LEGEND)
        console.print(PAPER_SEED)
    if any((r.get("effective_tokens_median") or FEW_TOKENS) < FEW_TOKENS for r in records):
        console.print(f"* too few tokens: a median under {FEW_TOKENS} effective tokens per image (one token moves a share "
                      "by 2% or more)")
    for note in notes or []:
        console.print(note)
    return console.file.getvalue()


def fitted_table(records: list[dict], title: str, varied: list[str], columns: list[str], width: int):
    """(table, ranges shown, dropped column names): the first form whose natural width fits `width`, of

    every column with its range; the flip ratio and its controls with their ranges, the least important other
    columns left out one by one; medians only, columns left out one by one (DROP_ORDER, then from the right).
    """
    from io import StringIO

    from rich.console import Console

    unbounded = Console(file=StringIO(), width=100_000, markup=False)  # measures the natural width
    shares = {f"{m}_median" for m in SHARES}
    order = [f"{name}_median" for name in DROP_ORDER] + [PAPER_COLUMN]
    order = [PAPER_COLUMN] + [c for c in order if c in columns and c != PAPER_COLUMN]
    order += [c for c in reversed(columns) if c not in order and c != "images"]

    def candidates():
        yield columns, set(columns)
        kept = list(columns)
        yield kept, shares
        for name in order:
            if name in shares or name == "effective_tokens_median":
                break
            kept = [c for c in kept if c != name]
            yield kept, shares
        kept = list(columns)
        yield kept, set()
        for name in order:
            if len(kept) <= 1:
                break
            kept = [c for c in kept if c != name]
            yield kept, set()

    for kept, ranges in candidates():
        out = text_table(records, title, varied, kept, ranges)
        if unbounded.measure(out).maximum <= width:
            break
    dropped = [DISPLAY.get(c.removesuffix("_median"), (c,))[0] for c in columns if c not in kept]
    return out, bool(ranges & set(kept)), dropped


def split_grid(records: list[dict]) -> tuple[dict, list[str]]:
    """The grid keys with one value over all DATR rows (-> the title) and the ones that vary (-> columns)."""
    fixed, varied = {}, []
    for key in GRID_KEYS:
        values = {r[key] for r in records if r[key] is not None}
        if len(values) == 1:
            fixed[key] = values.pop()
        elif values:
            varied.append(key)
    return fixed, varied


def cell(record: dict, name: str, ranges: set) -> str:
    """One metric's cell: "5.5%", or with ranges "5.5% [3.1–8.0%]"; "-" without a value."""
    from engine.present.report.tables import fmt_quartiles

    if name == PAPER_COLUMN:
        return record[name] or "-"
    if name == "images":
        return f"{record['images']}"
    metric = name.removesuffix("_median")
    fmt = DISPLAY.get(metric, (metric, "{:.4g}"))[1]
    if record[name] is None:
        return "-"
    if name not in ranges:
        return fmt.format(record[name])
    return fmt_quartiles(fmt, record[name], record[f"{metric}_q1"], record[f"{metric}_q3"])


def text_table(records: list[dict], title: str, varied: list[str], columns: list[str], ranges: set):
    from rich import box
    from rich.table import Table

    out = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    out.add_column("scope", justify="left", no_wrap=True)
    for key in varied:
        out.add_column(key, justify="right", no_wrap=True)
    for name in columns:
        header = DISPLAY.get(name.removesuffix("_median"), (name, ""))[0]
        out.add_column(header, justify="left" if name == PAPER_COLUMN else "right", no_wrap=True)
    for r in records:
        few = (r.get("effective_tokens_median") or FEW_TOKENS) < FEW_TOKENS
        cells = [str(r["scope"]) + (" *" if few else "")] + ["-" if r[key] is None else f"{r[key]:g}" for key in varied]
        out.add_row(*cells, *(cell(r, name, ranges) for name in columns))
    return out


def write_image_csv(sweep_dir: Path, rows: pa.Table, path: Path) -> int:
    """The per-image table of the report (one row per image at the reference point) as CSV; returns the image count."""
    from engine.present.provenance import run_is_simulated
    from engine.present.report.rows import Rows, reference_point, scope_order
    from engine.present.report.tables import image_table, write_csv
    from engine.run.record import read_run_json

    run = read_run_json(sweep_dir) or {}
    table = Rows.from_table(rows)
    ref = reference_point(table, run)
    images = image_table(table, ref, scope_order(table, run))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, images, simulated=run_is_simulated(run))
    return len(images)
