"""Where a sweep's results land: Parquet row shards, the errors table and run.json.

DIR/rows/part-NNNNNN-HHHHHHHHHHHH.parquet   one shard per batch (NNNNNN = the batch's first
                               item position, HHHH... = a digest of the image ids it holds)
DIR/errors/part-*.parquet      one shard per batch that had bad items
DIR/errors.parquet             all skipped items (image_id, path, error), merged at the end
DIR/run.json                   identity, resolved config, versions, device, backend choices, timings
DIR/superseded/<stamp>/        row shards (and figures) moved out because an item's files changed (engine.run.inputs)
DIR/.datr.lock                 held by the run that writes (engine.run.lock)

Every file is written to a temporary name and renamed (engine.core.files), so a killed
run leaves whole shards only. Row shards are write-once and named by the ids they hold:
no later batch can replace a finished one (a name that exists already is an error, never
an overwrite). Each shard's footer records what its items were computed from
(engine.run.inputs). `--resume` reads the image ids already present and skips them,
except items whose files changed since: their shards move to DIR/superseded/ (whole, never
rewritten; nothing reads them again) and their items are computed again. Every Parquet
file carries page checksums, verified whenever it is read. The row schema is the
analysis's (engine.analysis.rows.ROW_SCHEMA).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.analysis.rows import ROW_SCHEMA
from engine.core.errors import ConfigError, DataError
from engine.core.files import atomic_write_bytes, atomic_write_table, file_stem, write_once_table
from engine.run import inputs

ERROR_SCHEMA = pa.schema([("image_id", pa.string()), ("path", pa.string()), ("error", pa.string())])


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file of a sweep, its page checksums verified; a damaged file is a one-line DataError."""
    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: unreadable or damaged ({' '.join(str(err).split())[:160]}); delete it and rerun "
                        "with --resume to compute its items again") from None


def shard_name(image_ids: list[str], first_position: int) -> str:
    """part-<first position>-<digest of the ids>.parquet: two batches share a name only if they hold the same items."""
    digest = hashlib.sha256("\n".join(image_ids).encode()).hexdigest()[:12]
    return f"part-{first_position:06d}-{digest}.parquet"


class ResultStore:
    def __init__(self, out: Path, resume: bool, clean_stale: bool = True):
        self.out = Path(out)
        self.rows_dir = self.out / "rows"
        self.errors_dir = self.out / "errors"
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out}: exists and is not a folder; choose another --out")
        existing = sorted(self.rows_dir.glob("part-*.parquet")) if self.rows_dir.is_dir() else []
        if existing and not resume:
            raise ConfigError(f"--out {self.out}: already holds {len(existing)} result shards; add --resume to continue it or choose a new --out")
        for d in (self.rows_dir, self.errors_dir):
            d.mkdir(parents=True, exist_ok=True)
            if clean_stale:  # shards being written when a run was killed (not by a worker: others may be writing)
                for stale in d.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)

    def row_shards(self) -> list[Path]:
        return sorted(self.rows_dir.glob("part-*.parquet"))

    def finished_ids(self) -> set[str]:
        return set(self.finished_items())

    def finished_items(self) -> dict[str, tuple[Path, list[dict] | None]]:
        """image id -> (its shard, the inputs the shard records for it) for every item with rows."""
        done: dict[str, tuple[Path, list[dict] | None]] = {}
        for shard in self.row_shards():
            table = read_shard(shard, ["image_id"])
            recorded = inputs.decode(table.schema.metadata)
            for image_id in table.column("image_id").to_pylist():
                done[image_id] = (shard, recorded.get(image_id))
        return done

    def supersede(self, shards: set[Path], image_ids: set[str]) -> Path:
        """Move row shards out of rows/ into DIR/superseded/<stamp>/ (whole: nothing is rewritten), and the figures
        of `image_ids` (drawn from the old rows) into its figures/; returns that folder."""
        folder = self.out / "superseded" / f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}"
        folder.mkdir(parents=True)
        for shard in sorted(shards):
            os.replace(shard, folder / shard.name)  # one rename each: a shard is in rows/ or out of it, never half
        for image_id in sorted(image_ids):
            drawn = self.out / "figures" / file_stem(image_id)
            if drawn.is_dir():
                (folder / "figures").mkdir(exist_ok=True)
                os.replace(drawn, folder / "figures" / drawn.name)
        return folder

    def write_rows(self, columns: dict[str, list], first_position: int, item_inputs: dict[str, list[dict]] | None = None) -> Path:
        """Write one batch's rows to a new shard; a shard of that name already there is an error, never replaced.

        item_inputs: image id -> the record of its input files (engine.run.inputs), kept in the shard's footer.
        """
        table = pa.Table.from_pydict({name: columns[name] for name in ROW_SCHEMA.names}, schema=ROW_SCHEMA)
        if item_inputs is not None:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), inputs.INPUTS_KEY: inputs.encode(item_inputs)})
        ids = list(dict.fromkeys(columns["image_id"]))
        path = self.rows_dir / shard_name(ids, first_position)
        try:
            write_once_table(path, table)
        except FileExistsError:
            raise DataError(f"{path}: a shard with these items exists already (is another run writing {self.out}?); "
                            "nothing was overwritten; rerun with --resume") from None
        return path

    def write_errors(self, errors: list[tuple[str, str, str]], tag: str) -> None:
        if not errors:
            return
        ids, paths, messages = zip(*errors, strict=True)
        table = pa.Table.from_pydict({"image_id": list(ids), "path": list(paths), "error": list(messages)}, schema=ERROR_SCHEMA)
        atomic_write_table(self.errors_dir / f"part-{tag}-{time.time_ns()}.parquet", table)

    def merge_errors(self, known: set[str] | None = None) -> int:
        """errors.parquet = the latest error of every item not finished since; returns its row count.

        known: the ids this run lists (its items and what its index skipped); errors of
        others (images removed from the dataset since) are left out.
        """
        finished = self.finished_ids()
        latest: dict[str, tuple[str, str]] = {}
        for shard in sorted(self.errors_dir.glob("part-*.parquet"), key=lambda p: int(p.stem.rsplit("-", 1)[1])):
            for row in read_shard(shard).to_pylist():
                latest[row["image_id"]] = (row["path"], row["error"])
        kept = [(i, p, e) for i, (p, e) in latest.items() if i not in finished and (known is None or i in known)]
        table = pa.Table.from_pydict(
            {"image_id": [k[0] for k in kept], "path": [k[1] for k in kept], "error": [k[2] for k in kept]}, schema=ERROR_SCHEMA
        )
        atomic_write_table(self.out / "errors.parquet", table)
        return len(kept)

    def write_run_json(self, payload: dict) -> None:
        try:
            atomic_write_bytes(self.out / "run.json", json.dumps(payload, indent=2, default=str).encode())
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # a full disk: the record without indentation (a third smaller) may still fit; if not, the old one stays whole
            atomic_write_bytes(self.out / "run.json", json.dumps(payload, separators=(",", ":"), default=str).encode())


def read_rows(out: Path) -> pa.Table:
    """All row shards of a sweep folder as one table (sorted by shard, i.e. item order)."""
    shards = sorted((Path(out) / "rows").glob("part-*.parquet"))
    if not shards:
        raise DataError(f"{out}: no result shards under rows/; run `datr sweep ... --out {out}` first")
    return pa.concat_tables([read_shard(s) for s in shards])


def check_rows(out: Path, item_ids: list[str], expected_rows: int, errored: set[str]) -> set[str]:
    """Every item has exactly `expected_rows` rows, or none and an error; returns the ids with rows.

    Raises DataError naming the items and the files when a row is missing or duplicated.
    """
    counts: Counter[str] = Counter()
    files: dict[str, list[str]] = {}
    for shard in sorted((Path(out) / "rows").glob("part-*.parquet")):
        for image_id in read_shard(shard).column("image_id").to_pylist():  # every page read: checksums verified
            counts[image_id] += 1
            if not files.get(image_id) or files[image_id][-1] != shard.name:
                files.setdefault(image_id, []).append(shard.name)
    known = set(item_ids)
    strangers = sorted(set(counts) - known)
    if strangers:
        raise DataError(f"{out}/rows: {len(strangers)} image id(s) that are not items of this run, e.g. {strangers[0]} "
                        f"in {files[strangers[0]]}; those rows come from another dataset or run: move those files out "
                        "or choose a new --out")
    doubled = [i for i in item_ids if counts[i] > expected_rows]
    if doubled:
        first = doubled[0]
        raise DataError(f"{out}/rows: {len(doubled)} item(s) have their rows more than once, e.g. {first} "
                        f"({counts[first]} rows, expected {expected_rows}) in {files[first]}; delete the later of "
                        "those files and rerun with --resume")
    short = [i for i in item_ids if 0 < counts[i] < expected_rows]
    missing = [i for i in item_ids if counts[i] == 0 and i not in errored]
    if short or missing:
        example = (short or missing)[0]
        raise DataError(f"{out}/rows: {len(short)} item(s) with too few rows and {len(missing)} without rows or an error, "
                        f"e.g. {example} ({counts[example]} of {expected_rows} rows); rerun with --resume to fill them")
    return {i for i in item_ids if counts[i]}


def errored_ids(out: Path) -> set[str]:
    """The image ids of DIR/errors.parquet."""
    return set(read_shard(Path(out) / "errors.parquet", ["image_id"]).column("image_id").to_pylist())
