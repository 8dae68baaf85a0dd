"""One writer per --out: DIR/.datr.lock holds the writer's pid and host while it runs.

Taken with O_EXCL (atomic on a local or NFSv3+ file system), released on exit. A lock
left by a process that is gone (same host, pid not alive) is stale and taken over, with
a message; a live one, or one from another host, refuses the second sweep in one line.
Dask workers write under the client's lock (they never take it).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from engine.core.errors import ConfigError

LOCK_FILE = ".datr.lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutLock:
    """`with OutLock(out, echo):` -- the exclusive right to write `out`."""

    def __init__(self, out: Path, echo: Callable[[str], None] = print):
        self.path = Path(out) / LOCK_FILE
        self.echo = echo
        self.held = False

    def __enter__(self) -> OutLock:
        out = self.path.parent
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a folder; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.take_over_if_stale(me)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise ConfigError(f"{self.path}: could not take the lock; remove it if no datr run writes {self.path.parent}")

    def take_over_if_stale(self, me: dict) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = None, -1, ""
        if holder is not None and host != me["host"]:
            raise ConfigError(f"--out {self.path.parent}: another datr run (pid {pid} on {host}) is writing it; wait for it "
                              f"to end, or delete {self.path} if that run is gone")
        if holder is not None and pid_alive(pid):
            raise ConfigError(f"--out {self.path.parent}: another datr run (pid {pid}) is writing it; wait for it to end "
                              "or choose another --out")
        self.echo(f"lock: {self.path} was left by a run that is gone ({'pid ' + str(pid) if holder else 'unreadable'}); "
                  "taking it over")
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
