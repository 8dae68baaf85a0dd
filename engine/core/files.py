"""Atomic file writes: a temporary name beside the target, then one rename.

A killed process leaves whole files only (and hidden `.NAME.PID.tmp` leftovers, which
the result store clears when a run opens its folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path`, unique per process (workers may share a folder)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temporary_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = temporary_name(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)
