"""What each item's rows were computed from, so that `--resume` recomputes an item whose files changed.

An item's inputs are its image and GT files (a dataset run) or its cache file (--from-cache).
Every row shard records its items' inputs in its Parquet footer (key `datr.inputs`): per
file the path, size, mtime_ns, ctime_ns and inode seen when the run planned, and the
sha256 of the content, taken when the rows are written (null when the file was written in
between: the rows may come from either version, so the item counts as changed later).

On `--resume` a finished item is unchanged when its files have the same paths and the
same (size, mtime_ns, ctime_ns, inode); otherwise the content hash decides (a copy or a
`touch` changes no row). A changed item's shard is moved out of rows/ (engine.run.store:
never rewritten, never read again) and every item of that shard is computed again.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.core.files import file_sha256, stat_key

INPUTS_KEY = b"datr.inputs"

Planned = list[tuple[str, tuple[int, int, int, int] | None]]  # an item's files: (path, stat_key or None if missing)


def item_paths(index, cache, position: int) -> list[Path]:
    """The files item `position` is computed from: image and GT (a dataset index), or its cache file."""
    if cache is not None:
        return [cache.file_of(cache.image_ids[position])]
    item = index.items[position]
    return [item.image_path] + ([item.gt_path] if item.gt_path is not None else [])


def planned_inputs(paths: list[Path]) -> Planned:
    """The files of an item with their stat keys as the run plans (None for a file that is missing now)."""
    planned = []
    for path in paths:
        try:
            planned.append((str(path), stat_key(path)))
        except OSError:
            planned.append((str(path), None))
    return planned


def fingerprint(planned: Planned, digests: dict[str, str | None]) -> list[dict]:
    """The record of one item's files as its rows are written; `digests` memoises hashes within a batch (tiles share an image)."""
    record = []
    for path, planned_stat in planned:
        if path not in digests:
            digests[path] = content_hash(path, planned_stat)
        size, mtime_ns, ctime_ns, inode = planned_stat or (None, None, None, None)
        record.append({"path": path, "size": size, "mtime_ns": mtime_ns, "ctime_ns": ctime_ns, "inode": inode,
                       "sha256": digests[path]})
    return record


def content_hash(path: str, planned_stat) -> str | None:
    """sha256 of the file, or None when it changed since the run planned (or is gone): that content is not certain."""
    try:
        digest = file_sha256(Path(path))
        return digest if planned_stat is not None and stat_key(Path(path)) == tuple(planned_stat) else None
    except OSError:
        return None


def encode(records: dict[str, list[dict]]) -> bytes:
    return json.dumps(records, sort_keys=True).encode()


def decode(metadata: dict | None) -> dict[str, list[dict]]:
    """The inputs recorded in a shard's footer ({} when it records none)."""
    raw = (metadata or {}).get(INPUTS_KEY)
    if raw is None:
        return {}
    try:
        records = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return records if isinstance(records, dict) else {}


def what_changed(recorded: list[dict] | None, now: Planned) -> str | None:
    """Why an item's rows are stale ("its file X changed", ...), or None when its inputs are unchanged."""
    if not recorded:
        return "its rows record no inputs (written by an older datr)"
    paths = [path for path, _ in now]
    if [r.get("path") for r in recorded] != paths:
        return f"its files are now {', '.join(Path(p).name for p in paths)}"
    for record, (path, stat) in zip(recorded, now, strict=True):
        if stat is None:
            return f"{path} is missing"
        same_stat = [record.get(k) for k in ("size", "mtime_ns", "ctime_ns", "inode")] == list(stat)
        if same_stat and record.get("sha256") is not None:
            continue
        if record.get("sha256") is None:
            return f"{path} was written while its rows were computed"
        if file_sha256(Path(path)) != record["sha256"]:
            return f"{path} changed"
    return None
