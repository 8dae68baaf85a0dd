"""The per-image figures of a sweep, drawn by worker processes (matplotlib draws on one core per process).

Each image's figures are split into small groups of names; forked workers draw the groups
from the views the parent prepared (inherited, not pickled: an image's full-resolution
masks are ~170 MB) and hand back the records; the parent writes every image's manifest and
page in the figures' plan order. The figures only read the maps and the stored rows, so
drawing in parallel changes no result. Where fork is unavailable, or with one worker, they
are drawn here in turn.

The workers end with the drawing: killed when it stops (an error, Ctrl-C, SIGTERM) and
by the kernel when the parent dies, even by kill -9 (engine.core.processes.die_with_parent).
An image's figures.json is written once all its figures are drawn, so `figures_complete`
(a manifest whose files all exist, in every asked-for format) tells `--resume` which
images to draw again.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from engine.core.files import file_stem
from engine.core.processes import die_with_parent, quiet_helper_signals
from engine.present.figures.draw import draw_view, figure_plan, finish_image, image_folder
from engine.present.figures.view import FigureOptions, FigureRecord, ImageView, image_view

GROUP = 4  # figures per task: small enough to balance two cores, large enough to amortise a task

_JOBS: list[tuple[ImageView, Path, FigureOptions]] = []  # set in the parent before the workers fork


def draw_sweep_figures(result, cfg, options: FigureOptions | None = None, echo: Callable[[str], None] = print,
                       workers: int | None = None) -> list[Path]:
    """The figures of every image the sweep handed over (result.figures) into DIR/figures/<id>/; returns the pages."""
    options = (options or FigureOptions()).validate()
    handed = result.figures
    jobs = []
    for maps, row in handed.maps:
        view = image_view(maps, row, handed, cfg)
        jobs.append((view, image_folder(Path(cfg.out) / "figures", view), options))
    tasks = [(i, group) for i, (view, folder, opts) in enumerate(jobs) for group in name_groups(view, folder, opts)]
    if not tasks:
        return []
    workers = max(1, min(workers or usable_cores(), len(tasks)))
    if "fork" not in multiprocessing.get_all_start_methods():
        workers = 1
    total = sum(len(g) for _, g in tasks)
    echo(f"figures: drawing {total} figures of {len(jobs)} image(s) with {workers} worker process(es)")
    records: dict[int, list[FigureRecord]] = {i: [] for i in range(len(jobs))}
    left = {i: sum(1 for j, _ in tasks if j == i) for i in range(len(jobs))}
    pages = []

    def finished(i: int, drawn: list[FigureRecord]) -> None:
        records[i] += drawn
        left[i] -= 1
        if left[i] == 0:
            view, folder, opts = jobs[i]
            order = {name: n for n, (name, _) in enumerate(figure_plan(view, folder, opts))}
            finish_image(folder, view, sorted(records[i], key=lambda r: order[r.name]), cfg)
            pages.append(folder / "index.html")
            echo(f"figures: {view.image_id}: {len(records[i])} figures -> {folder / 'index.html'}")

    _JOBS[:] = jobs
    try:
        if workers == 1:
            for i, group in tasks:
                finished(i, draw_group(i, group))
        else:
            draw_in_workers(tasks, workers, finished)
    finally:
        _JOBS.clear()
    return pages


def draw_in_workers(tasks: list[tuple[int, tuple[str, ...]]], workers: int, finished: Callable) -> None:
    """Draw the groups in forked workers; whatever stops the drawing stops the workers too."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=start_worker,
                               initargs=(os.getpid(),))
    try:
        futures = {pool.submit(draw_group, i, group): i for i, group in tasks}
        for future in as_completed(futures):
            finished(futures[future], future.result())
    except BaseException:  # Ctrl-C, SIGTERM or a failed figure: drop the queued groups, stop the ones being drawn
        stop_workers(pool)
        raise
    pool.shutdown()


def start_worker(parent: int) -> None:
    """A figure worker dies with its parent and leaves Ctrl-C and SIGTERM to it (the parent stops the workers)."""
    die_with_parent(parent)
    quiet_helper_signals()


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now (a group being drawn is not waited for) and drop the queued ones."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def figures_complete(out: Path, image_id: str, formats: tuple[str, ...]) -> bool:
    """Whether DIR/figures/<image>/figures.json lists a complete drawing with every file there, in each format."""
    folder = Path(out) / "figures" / file_stem(image_id)
    try:
        manifest = json.loads((folder / "figures.json").read_text())
    except (OSError, ValueError):
        return False
    figures = manifest.get("figures") if isinstance(manifest, dict) else None
    if manifest.get("image_id") != image_id or not figures:
        return False
    for figure in figures:
        files = figure.get("files") or []
        if not all((folder / name).is_file() for name in files):
            return False
        if not {f".{fmt}" for fmt in formats} <= {Path(name).suffix for name in files}:
            return False
    return True


def usable_cores() -> int:
    """The CPU cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def name_groups(view: ImageView, folder: Path, options: FigureOptions) -> list[tuple[str, ...]]:
    """The selected figure names of one image in groups of GROUP."""
    names = [name for name, _ in figure_plan(view, folder, options) if options.only is None or name in options.only]
    return [tuple(names[i:i + GROUP]) for i in range(0, len(names), GROUP)]


def draw_group(i: int, names: tuple[str, ...]) -> list[FigureRecord]:
    """Draw figures `names` of job i (in a worker: the job list came with the fork)."""
    view, folder, options = _JOBS[i]
    return draw_view(view, folder, replace(options, only=names))
