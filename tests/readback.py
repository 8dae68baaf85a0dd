"""Reading a finished sweep back in the tests: its rows keyed one by one, its run.json."""

from __future__ import annotations

import json
from pathlib import Path

from engine.run.store import read_rows


def rows_by_key(out: Path) -> dict:
    """Every row keyed by (image, scope, tau, alpha, d, k); asserts no key repeats."""
    rows = read_rows(out).to_pylist()
    keyed = {(r["image_id"], r["scope"], r["tau"], r["alpha"], r["d"], r["k"]): r for r in rows}
    assert len(keyed) == len(rows)
    return keyed


def run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())
