"""The per-scope summary of a sweep (the paper's table, averaged over images)."""

from __future__ import annotations

import pyarrow as pa

from engine.data.classes import UDD5_CLASSES
from engine.present.paper import TOTAL_TOKENS, paper_scope

SUMMARY_COLUMNS = ("effective_tokens", "flip_ratio", "flip_ratio_processed", "flip_ratio_null", "flip_ratio_reseed",
                   "cos_distance", "datr_shift", "iou", "accuracy", "ari")
PAPER_COLUMN = "paper (one image)"


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
        masks = "" if paper.masks is None else f", {paper.masks} masks"
        cells.append(f"flip {paper.flip_ratio:.1%}, cos dist {paper.cos_distance:.4f}, {paper.effective_tokens}/{TOTAL_TOKENS} eff{masks}")
    return table.append_column(PAPER_COLUMN, pa.array(cells, type=pa.string()))


def render_summary(table: pa.Table, title: str) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    out = Table(title=title)
    for name in table.column_names:
        paper = name == PAPER_COLUMN
        out.add_column(name.replace("_mean", "").replace("image_id_count", "images"), justify="left" if paper else "right",
                       no_wrap=paper)
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
    Console(file=buf, width=250 if PAPER_COLUMN in table.column_names else 200).print(out)
    return buf.getvalue()
