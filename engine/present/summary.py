"""The per-scope summary of a sweep (the paper's table, averaged over images)."""

from __future__ import annotations

import pyarrow as pa

SUMMARY_COLUMNS = ("effective_tokens", "flip_ratio", "flip_ratio_processed", "cos_distance", "datr_shift", "iou", "accuracy", "ari")


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


def render_summary(table: pa.Table, title: str) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    out = Table(title=title)
    for name in table.column_names:
        out.add_column(name.replace("_mean", "").replace("image_id_count", "images"), justify="right")
    for row in table.to_pylist():
        cells = []
        for value in row.values():
            if value is None:
                cells.append("-")
            elif isinstance(value, float):
                cells.append(f"{value:.4g}")
            else:
                cells.append(str(value))
        out.add_row(*cells)
    buf = StringIO()
    Console(file=buf, width=200).print(out)
    return buf.getvalue()
