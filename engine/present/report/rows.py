"""The report's inputs: the row table as numpy columns, the grid point it is drawn at, the other files of DIR."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.analysis.rows import CONTROL_COLUMNS, ENSEMBLE_COLUMNS
from engine.core.choices import RESERVED_SCOPES
from engine.core.errors import DataError
from engine.run.store import read_rows

# columns that rows of older sweeps lack (the controls, the seed ensemble's): read as all-null
OPTIONAL_COLUMNS = (*CONTROL_COLUMNS, *ENSEMBLE_COLUMNS)


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
        if name not in self.columns and name in OPTIONAL_COLUMNS:  # rows written before these columns existed
            return np.full(self.n, np.nan)
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


def is_sweep(folder: Path) -> bool:
    return (folder / "run.json").is_file() or (folder / "rows").is_dir() or (folder / "errors.parquet").is_file()


def find_sweep(folder: Path, echo=print) -> Path:
    """The sweep folder FOLDER is, or the one sweep folder one level below it (e.g. demo-out -> demo-out/sweep)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; give the --out folder of `datr sweep`")
    if is_sweep(folder):
        return folder
    below = sorted(p for p in folder.iterdir() if p.is_dir() and is_sweep(p))
    if len(below) == 1:
        echo(f"using the sweep in {below[0]}")
        return below[0]
    if below:
        raise DataError(f"{folder}: holds {len(below)} sweeps ({', '.join(p.name for p in below)}); name one")
    raise DataError(f"{folder}: no sweep here (looked for run.json, rows/ or errors.parquet in it and in its "
                    "subfolders); give the --out folder of `datr sweep`")


def read_rows_if_any(sweep_dir: Path):
    if not sorted((sweep_dir / "rows").glob("part-*.parquet")):
        return None
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
    order = [s for s in RESERVED_SCOPES if s in present] + [p for p in prompts if p in present]
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

