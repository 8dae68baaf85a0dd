"""The terminal summary: the paper's single-image column, matched to scopes by GT class."""

import pyarrow as pa

from engine.analysis.rows import ROW_SCHEMA
from engine.present.summary import PAPER_COLUMN, render_summary, summarize, with_paper_column


def rows_table(entries):
    columns = {name: [e.get(name) for e in entries] for name in ROW_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=ROW_SCHEMA)


def test_paper_column_matches_class_scopes_by_class_not_prompt():
    base = {"image_id": "a", "tau": 0.5, "alpha": 0.3, "d": 32, "k": 5, "flip_ratio": 0.2}
    rows = rows_table([{**base, "scope": "encoder", "scope_kind": "encoder", "tau": None, "alpha": None, "flip_ratio": None},
                       {**base, "scope": "global", "scope_kind": "global"},
                       {**base, "scope": "trees", "scope_kind": "class", "class_id": 0},  # a prompt for UDD5 vegetation
                       {**base, "scope": "car", "scope_kind": "class", "class_id": 3},
                       {**base, "scope": "other", "scope_kind": "class", "class_id": 4}])
    table = with_paper_column(summarize(rows), rows)
    cells = dict(zip(table.column("scope").to_pylist(), table.column(PAPER_COLUMN).to_pylist(), strict=True))
    # the paper's numbers (global 4099 tokens, 47.4%, 0.8359; vegetation 17 masks, 729, 34.2%, 0.7040; vehicle 30, 139, 61.9%, 0.6378)
    assert "47.4%" in cells["global"] and "0.8359" in cells["global"] and "4099/5184" in cells["global"]
    assert cells["trees"] == "34.2% 0.7040 729/5184 17"  # flip, cos dist, effective tokens, masks (the legend's order)
    assert cells["car"] == "61.9% 0.6378 139/5184 30"
    assert cells["encoder"] == "-" and cells["other"] == "-"
    text = render_summary(table, "t", width=80)
    assert "paper (one image, one seed)" in text and "34.2% 0.7040 729/5184 17" in text
    assert "paper (one image, one seed): flip, cos dist, effective tokens, masks" in text
    assert max(len(line) for line in text.splitlines()) <= 80
