"""The per-scope summary of a sweep in the terminal (the paper's table, averaged over images), and the per-image CSV.

The table fits the terminal: grid columns that do not vary go into the title, shares are
shown in % (as in the report), and when the columns still do not fit, the least important
ones are left out (and named under the table) rather than wrapped.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from engine.data.classes import UDD5_CLASSES
from engine.present.paper import TOTAL_TOKENS, paper_scope

SUMMARY_COLUMNS = ("kept_queries", "effective_tokens", "flip_ratio", "flip_ratio_processed", "flip_ratio_null",
                   "flip_ratio_null_processed", "flip_ratio_reseed", "cos_distance", "datr_shift", "iou", "accuracy",
                   "nmi", "ari")
GRID_KEYS = ("tau", "alpha", "d", "k")
# (column, header, format); a share is printed in %, as the report does
DISPLAY = {
    "image_id_count": ("images", "{:.0f}"), "kept_queries": ("masks", "{:.1f}"), "effective_tokens": ("eff.tok", "{:.0f}"),
    "flip_ratio": ("flip", "{:.1%}"), "flip_ratio_processed": ("flip proc", "{:.1%}"),
    "flip_ratio_null": ("null", "{:.1%}"), "flip_ratio_null_processed": ("null proc", "{:.1%}"),
    "flip_ratio_reseed": ("reseed", "{:.1%}"), "cos_distance": ("cos dist", "{:.4f}"), "datr_shift": ("shift", "{:.4f}"),
    "iou": ("IoU", "{:.3f}"), "accuracy": ("acc", "{:.3f}"), "nmi": ("NMI", "{:.3f}"), "ari": ("ARI", "{:.3f}"),
}
# left out first when the table is too wide for the terminal
DROP_ORDER = ("datr_shift", "flip_ratio_null_processed", "ari", "flip_ratio_processed", "kept_queries",
              "flip_ratio_reseed", "cos_distance", "nmi")
PAPER_COLUMN = "paper (one image)"
PAPER_LEGEND = "paper (one image): flip, cos dist, effective tokens, masks"


def summarize(rows: pa.Table) -> pa.Table:
    """Mean of each metric per (scope, tau, alpha, d, k), nulls left out; plus the image count."""
    keys = ["scope", "tau", "alpha", "d", "k"]
    present = [c for c in SUMMARY_COLUMNS if c in rows.column_names]
    aggs = [("image_id", "count")] + [(c, "mean") for c in present]
    table = rows.group_by(keys, use_threads=False).aggregate(aggs)
    order = {s: i for i, s in enumerate(dict.fromkeys(rows.column("scope").to_pylist()))}
    rank = [order[s] for s in table.column("scope").to_pylist()]
    table = table.append_column("_rank", pa.array(rank))
    return table.sort_by([("_rank", "ascending"), ("tau", "ascending"), ("alpha", "ascending"), ("d", "ascending"), ("k", "ascending")]).drop_columns(["_rank"])


def paper_name(scope: str, class_id: int | None) -> str | None:
    """The paper's name for a scope: `global`, or a class scope's UDD5 class name (its prompt may differ)."""
    if scope == "global":
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


def render_summary(table: pa.Table, title: str, *, width: int | None = None) -> str:
    """The summary as a text table no wider than `width` (default: the terminal's width)."""
    import shutil
    from io import StringIO

    from rich.console import Console

    width = width or shutil.get_terminal_size((100, 24)).columns
    records = table.to_pylist()
    fixed, varied = split_grid(records)
    if fixed:
        title += "\n" + ", ".join(f"{key}={value:g}" for key, value in fixed.items())
    metrics = [name for name in table.column_names if name not in ("scope", *GRID_KEYS)
               and any(r[name] is not None for r in records)]
    dropped: list[str] = []
    console = Console(file=StringIO(), width=width, color_system=None, highlight=False)
    unbounded = Console(file=StringIO(), width=100_000)  # measures the table's natural width
    out = text_table(records, title, varied, metrics)
    for name in DROP_ORDER:
        if unbounded.measure(out).maximum <= width:
            break
        if f"{name}_mean" in metrics:
            metrics.remove(f"{name}_mean")
            dropped.append(DISPLAY[name][0])
            out = text_table(records, title, varied, metrics)
    console.print(out)
    if dropped:
        console.print(f"left out to fit {width} columns: {', '.join(dropped)} (the report and `--csv` have them)")
    if PAPER_COLUMN in metrics:
        console.print(PAPER_LEGEND)
    if any(m.startswith(("flip_ratio_null", "flip_ratio_reseed")) for m in metrics):
        console.print("flip, null, reseed: % of effective tokens; null and reseed are the flip ratio's controls")
    else:
        console.print("flip: % of effective tokens (these rows carry no null / reseed controls)")
    return console.file.getvalue()


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


def text_table(records: list[dict], title: str, varied: list[str], metrics: list[str]):
    from rich import box
    from rich.table import Table

    out = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    out.add_column("scope", justify="left", no_wrap=True)
    for key in varied:
        out.add_column(key, justify="right", no_wrap=True)
    for name in metrics:
        out.add_column(DISPLAY.get(name.removesuffix("_mean"), (name, ""))[0], justify="left" if name == PAPER_COLUMN else "right",
                       no_wrap=True)
    for r in records:
        cells = [str(r["scope"])] + ["-" if r[key] is None else f"{r[key]:g}" for key in varied]
        for name in metrics:
            fmt = DISPLAY.get(name.removesuffix("_mean"), (name, "{:.4g}"))[1]
            cells.append("-" if r[name] is None else str(r[name]) if isinstance(r[name], str) else fmt.format(r[name]))
        out.add_row(*cells)
    return out


def write_image_csv(sweep_dir: Path, rows: pa.Table, path: Path) -> int:
    """The per-image table of the report (one row per image at the reference point) as CSV; returns the image count."""
    from engine.present.report.rows import Rows, reference_point, scope_order
    from engine.present.report.tables import image_table, write_csv
    from engine.run.record import read_run_json

    run = read_run_json(sweep_dir) or {}
    table = Rows.from_table(rows)
    ref = reference_point(table, run)
    images = image_table(table, ref, scope_order(table, run))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, images)
    return len(images)
