"""How a datr process ends: the signals a user or a batch scheduler sends, and helper processes that die with it.

SIGINT (Ctrl-C), SIGTERM and SIGHUP all end a command the same way: `Interrupted` (a
KeyboardInterrupt) is raised in the main thread, so every `finally` runs: run.json says
"interrupted", the lock is released, no temporary file is left, and the CLI prints the
command that resumes and exits with 128 + the signal's number. A second signal while the
run records how it ended is ignored, and a third ends the process at once (as does
kill -9; --resume recovers from either). `signals_interrupt` is a process-wide switch: the CLI sets it
around each command.

Helper processes (DataLoader workers, figure workers) call `die_with_parent` when they
start: the kernel sends them SIGKILL when their parent dies, even by kill -9.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 1.0  # where prctl is missing: how often a helper checks that its parent is alive


class Interrupted(KeyboardInterrupt):
    """A signal ended the command; exit_code = 128 + the signal's number (130 for Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


_STATE = {"signalled": None}


def _on_signal(signum: int, _frame) -> None:
    if _STATE["signalled"] is not None:  # the run is already recording how it ended
        signal.signal(signum, signal.SIG_DFL)  # ... and one more of this signal ends it at once
        return
    _STATE["signalled"] = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While a command runs: SIGINT, SIGTERM and SIGHUP raise `Interrupted` once in the main thread (process-wide;
    the CLI sets it around each command, and the handlers before it come back after)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    _STATE["signalled"] = None
    before = {signum: signal.signal(signum, _on_signal) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def exit_code(err: BaseException) -> int:
    """The exit status for an interrupt: 128 + its signal (130 for a plain KeyboardInterrupt)."""
    return getattr(err, "exit_code", 128 + signal.SIGINT)


def die_with_parent(parent_pid: int | None = None) -> None:
    """In a helper process: be killed when the parent dies (PR_SET_PDEATHSIG on Linux, a watchdog thread elsewhere).

    parent_pid: the pid the helper was started by (default: the current parent). If it is
    already gone when this runs, the helper exits at once.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    if sys.platform.startswith("linux") and _prctl_deathsig():
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="datr-parent-watch").start()


def _prctl_deathsig() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    event = threading.Event()
    while not event.wait(PARENT_POLL_S):
        if os.getppid() != parent:
            os._exit(1)


def quiet_helper_signals() -> None:
    """In a helper the parent stops itself: Ctrl-C is the parent's to handle, SIGTERM/SIGHUP end the helper at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
