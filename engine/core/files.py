"""Atomic file writes: a temporary name beside the target, then one rename.

A killed process leaves whole files only (and hidden `.NAME.PID.tmp` leftovers, which
the result store clears when a run opens its folder).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyarrow is imported where a table is written: the CLI's start-up (config, file names) stays light
    import pyarrow as pa


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path`, unique per process (workers may share a folder)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temporary_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (full disk) leaves no half-written file behind


def naming(err: OSError, path: Path) -> OSError:
    """`err` with `path` as its file name where it has none (pyarrow's "[errno 28] No space left ..." has none)."""
    if err.filename is not None:
        return err
    found = re.search(r"\[errno (\d+)\] ([^;\n]+)", str(err))
    code = int(found.group(1)) if found else err.errno
    return OSError(code, found.group(2).strip() if found else str(err), str(path))


def write_parquet(table: pa.Table, tmp: Path, path: Path) -> None:
    import pyarrow.parquet as pq

    failure = None
    try:
        pq.write_table(table, tmp, write_page_checksum=True)
    except OSError as err:
        failure = naming(err, path)
    if failure is not None:  # raised outside the handler: no traceback keeps pyarrow's writer (and its open file) alive
        raise failure


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write `table` to `path` (Parquet with page checksums, verified on read: engine.run.store.read_shard)."""
    tmp = temporary_name(path)
    try:
        write_parquet(table, tmp, path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_once_table(path: Path, table: pa.Table) -> None:
    """Like atomic_write_table, but never replaces an existing `path` (FileExistsError instead)."""
    tmp = temporary_name(path)
    try:
        write_parquet(table, tmp, path)
        try:
            os.link(tmp, path)  # atomic, and fails where `path` exists
        except FileExistsError:
            raise
        except OSError as err:  # a file system without hard links: check, then rename (the --out lock keeps others out)
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            if path.exists():
                raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stat_key(path: Path) -> tuple[int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode): equal keys mean the file was not written since (the fast check).

    ctime cannot be set back by a user, so a tool that restores mtime (cp -p, rsync -t) still
    shows as a change; the content hash behind it then decides.
    """
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in blocks (a multi-GB checkpoint never sits in memory)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def file_stem(text: str) -> str:
    """A string as a file-name stem (the per-image figure folders and the prompts' figure names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"
