"""Are two sweep folders' results the same, bit for bit? `python -m bench.rows_diff DIR_A DIR_B`.

Compares what a sweep computes, not how it was written: the rows as one table, row by row
under their key (image, scope, tau, alpha, d, k), whatever shards a batch size cut them into;
every other Parquet file (errors.parquet, dataset_clustering.parquet) by schema and
values, dataset_clustering.json by content, and each feature-cache file by tensors and
metadata (the safetensors header orders metadata keys by a hash map, so its bytes vary
from run to run). Timestamped error shards (errors/part-*) are left out: errors.parquet
merges them; so are superseded/ shards (rows of items whose files changed) and each
shard's footer metadata (which files its rows came from). Use it to check that a refactor, a batch size or a worker count changes
no number: run the same sweep both ways, then diff the two folders. Exit status 1 on a
difference, with one line per differing file (for the rows: how many differ, in which
columns, and the first such key).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def _parquet_digest(path: Path) -> str:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    # the footer's metadata (each item's input files: paths, mtimes) says how the rows were made, not what they are
    payload = json.dumps([table.schema.remove_metadata().to_string(), table.to_pylist()], sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()


def _safetensors_digest(path: Path) -> str:
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), "pt") as tensors:
        digest.update(json.dumps(tensors.metadata(), sort_keys=True).encode())
        for name in sorted(tensors.keys()):
            t = tensors.get_tensor(name).contiguous()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


ROW_KEY = ("image_id", "scope", "tau", "alpha", "d", "k")


def keyed_rows(folder: Path) -> tuple[list[str], dict[tuple, dict]]:
    """(column names, row key -> row) of a sweep folder's rows/ shards; ([], {}) where it has none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted((Path(folder) / "rows").glob("part-*.parquet"))
    if not shards:
        return [], {}
    table = pa.concat_tables([pq.read_table(s).replace_schema_metadata(None) for s in shards])
    return table.schema.names, {tuple(r[c] for c in ROW_KEY): r for r in table.to_pylist()}


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # NaN equals NaN here


def row_lines(a: Path, b: Path, keyed_a: tuple[list[str], dict], keyed_b: tuple[list[str], dict]) -> list[str]:
    """The rows of two sweep folders (keyed_rows of each) compared under their key: [] when every row
    is the same, bit for bit."""
    (names_a, rows_a), (names_b, rows_b) = keyed_a, keyed_b
    lines = []
    if names_a != names_b:
        lines.append(f"rows: the columns differ ({len(names_a)} in {a}, {len(names_b)} in {b})")
    for side, mine, other in ((a, rows_a, rows_b), (b, rows_b, rows_a)):
        alone = sorted((k for k in mine if k not in other), key=repr)
        if alone:
            lines.append(f"rows: {len(alone)} of {len(mine)} only in {side} (first: {alone[0]})")
    shared = sorted(set(names_a) & set(names_b))
    differing = {}  # key -> the columns in which its two rows differ
    for key in sorted((k for k in rows_a if k in rows_b), key=repr):
        if changed := {c for c in shared if not _same(rows_a[key][c], rows_b[key][c])}:
            differing[key] = changed
    if differing:
        columns = sorted(set().union(*differing.values()))
        lines.append(f"rows: {len(differing)} of {len(rows_a)} differ, in {', '.join(columns)} (first: {next(iter(differing))})")
    return lines


def digests(folder: Path) -> dict[str, str]:
    """relative path -> digest of every result file under a sweep folder but the row shards (see rows_diff)."""
    folder = Path(folder)
    out = {}
    for path in sorted(folder.rglob("*.parquet")):
        parts = path.relative_to(folder).parts
        if (path.parent.name == "errors" and path.name.startswith("part-")) or "superseded" in parts or parts[0] == "rows":
            continue  # error shards are merged into errors.parquet; superseded shards are no longer results
        out[str(path.relative_to(folder))] = _parquet_digest(path)
    for path in sorted(folder.rglob("dataset_clustering.json")):
        out[str(path.relative_to(folder))] = hashlib.sha256(
            json.dumps(json.loads(path.read_text()), sort_keys=True).encode()).hexdigest()
    for path in sorted(folder.rglob("*.safetensors")):
        out[str(path.relative_to(folder))] = _safetensors_digest(path)
    return out


def compare(a: Path, b: Path) -> tuple[list[str], int, int]:
    """(the difference lines, the rows of `a`, its other result files): each folder read once."""
    keyed_a, keyed_b = keyed_rows(a), keyed_rows(b)
    da, db = digests(a), digests(b)
    lines = row_lines(a, b, keyed_a, keyed_b)
    for name in sorted(set(da) | set(db)):
        if name not in da or name not in db:
            lines.append(f"{name}: only in {a if name in da else b}")
        elif da[name] != db[name]:
            lines.append(f"{name}: differs")
    return lines, len(keyed_a[1]), len(da)


def diff(a: Path, b: Path) -> list[str]:
    """One line per file that differs or exists on one side only, and the rows' lines; [] when the results are identical."""
    return compare(a, b)[0]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(Path(x).is_dir() for x in args):
        print("usage: python -m bench.rows_diff DIR_A DIR_B   (two sweep --out folders)", file=sys.stderr)
        return 2
    lines, rows, count = compare(Path(args[0]), Path(args[1]))
    for line in lines:
        print(line)
    print(f"{rows} rows and {count} other result files compared: " + ("identical" if not lines else f"{len(lines)} differences"))
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
