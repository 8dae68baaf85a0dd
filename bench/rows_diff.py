"""Are two sweep folders' results the same, bit for bit? `python -m bench.rows_diff DIR_A DIR_B`.

Compares what a sweep computes, not how it was written: every Parquet file under the
folders (rows/ shards, errors.parquet, dataset_clustering.parquet) by schema and
values, dataset_clustering.json by content, and each feature-cache file by tensors and
metadata (the safetensors header orders metadata keys by a hash map, so its bytes vary
from run to run). Timestamped error shards (errors/part-*) are left out: errors.parquet
merges them; so are superseded/ shards (rows of items whose files changed) and each
shard's footer metadata (which files its rows came from). Use it to check that a refactor, a batch size or a worker count changes
no number: run the same sweep both ways, then diff the two folders. Exit status 1 on a
difference, with one line per differing file.
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


def digests(folder: Path) -> dict[str, str]:
    """relative path -> digest of every result file under a sweep folder."""
    folder = Path(folder)
    out = {}
    for path in sorted(folder.rglob("*.parquet")):
        if (path.parent.name == "errors" and path.name.startswith("part-")) or "superseded" in path.relative_to(folder).parts:
            continue  # error shards are merged into errors.parquet; superseded shards are no longer results
        out[str(path.relative_to(folder))] = _parquet_digest(path)
    for path in sorted(folder.rglob("dataset_clustering.json")):
        out[str(path.relative_to(folder))] = hashlib.sha256(
            json.dumps(json.loads(path.read_text()), sort_keys=True).encode()).hexdigest()
    for path in sorted(folder.rglob("*.safetensors")):
        out[str(path.relative_to(folder))] = _safetensors_digest(path)
    return out


def diff(a: Path, b: Path) -> list[str]:
    """One line per file that differs or exists on one side only; [] when the results are identical."""
    da, db = digests(a), digests(b)
    lines = []
    for name in sorted(set(da) | set(db)):
        if name not in da or name not in db:
            lines.append(f"{name}: only in {a if name in da else b}")
        elif da[name] != db[name]:
            lines.append(f"{name}: differs")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(Path(x).is_dir() for x in args):
        print("usage: python -m bench.rows_diff DIR_A DIR_B   (two sweep --out folders)", file=sys.stderr)
        return 2
    lines = diff(Path(args[0]), Path(args[1]))
    for line in lines:
        print(line)
    count = len(digests(Path(args[0])))
    print(f"{count} result files compared: " + ("identical" if not lines else f"{len(lines)} differ"))
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
