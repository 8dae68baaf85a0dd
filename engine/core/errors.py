"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class DatrError(Exception):
    """A user-facing error: one line that names the file or option and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(DatrError):
    """An option or configuration value out of range or inconsistent."""


class DataError(DatrError):
    """A dataset, image or label file that cannot be read as asked."""


class CheckpointError(DatrError):
    """A model checkpoint or vocabulary that cannot be loaded as asked."""


class BackendError(DatrError):
    """A backend or device that was asked for and is not available."""


def one_line(err: BaseException, path: object | None = None) -> str:
    """An exception as one line, without repeating the path the caller's message starts with."""
    text = str(err)
    if path is not None:
        text = text.replace(f" '{path}'", "").replace(f" {path}", "")
    return " ".join(text.split()) or type(err).__name__


def os_error_message(err: OSError) -> str:
    """A file-system error (full disk, read-only, permission, ...) as one line naming the file and the fix."""
    import errno

    where = err.filename or "a file"
    reason = err.strerror or one_line(err)
    fix = {
        errno.ENOSPC: "free space there (or choose another --out / --save-features), then rerun with --resume",
        errno.EDQUOT: "free space in your quota, then rerun with --resume",
        errno.EROFS: "the file system is read-only; choose a writable --out / --save-features",
        errno.EACCES: "you may not write there; choose a folder you own or fix its permissions",
        errno.EPERM: "you may not write there; choose a folder you own or fix its permissions",
        errno.ENOENT: "it does not exist (moved or deleted while the run was working?)",
        errno.ELOOP: "a symbolic link points to itself; fix or remove the link",
    }.get(err.errno, "check the path and rerun (with --resume for a sweep)")
    return f"{where}: {reason}; {fix}"
