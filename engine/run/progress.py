"""The sweep's progress bar on stderr (rich): items done, rate, time left."""

from __future__ import annotations


def progress_bar(total: int, enabled: bool):
    """A rich Progress for a sweep of `total` items; a task added with a `rate` field shows img/s."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )
