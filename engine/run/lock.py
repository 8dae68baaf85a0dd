"""One writer per folder (a sweep's --out, a feature cache): `fcntl.flock` on DIR/.datr.lock.

The kernel holds the lock for the open file and drops it when the holder's process ends,
however it ends (kill -9 included), so nothing has to guess whether a pid is alive: a file
nobody holds is simply taken. The pid and host written into the file are information for
the refusal message only. Only the holder removes the file, and it removes it while it
still holds the lock; a contender that opened the old file before the removal notices
that the path now names another file (or none) and tries again. Over NFS, Linux emulates
flock with fcntl byte-range locks, which the server arbitrates across hosts.
Dask workers write under the client's lock (they never take it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from engine.core.errors import ConfigError

LOCK_FILE = ".datr.lock"
ATTEMPTS = 16  # a holder that releases while we open the file makes us try again; more than a handful means a bug


class FolderLock:
    """`with FolderLock(folder, "--out"):` -- the exclusive right to write `folder` (created if missing)."""

    def __init__(self, folder: Path, option: str = "--out"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.option = option
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.option} {self.folder}: exists and is not a folder; choose another {self.option}")
        self.folder.mkdir(parents=True, exist_ok=True)
        for _attempt in range(ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(fd)
                os.close(fd)
                raise ConfigError(f"{self.option} {self.folder}: another datr run{holder} is writing it; wait for it to "
                                  f"end or choose another {self.option}") from None
            except BaseException:
                os.close(fd)
                raise
            if same_file(fd, self.path):
                self.fd = fd
                write_holder(fd)
                return self
            os.close(fd)  # the holder we waited on removed this file as it ended: lock the path's new file
        raise ConfigError(f"{self.path}: could not take the lock after {ATTEMPTS} attempts; is something removing it?")

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still holding it: nobody can take the file we remove
        finally:
            os.close(self.fd)  # releases the lock
            self.fd = None



def same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def write_holder(fd: int) -> None:
    """Who holds the lock, for the message another run prints (information only)."""
    data = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def read_holder(fd: int) -> str:
    """" (pid N on HOST)" from the lock file, or "" while the holder has not written it yet."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return f" (pid {int(holder['pid'])} on {holder['host']})"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return ""
