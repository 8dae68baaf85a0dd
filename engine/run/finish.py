"""How every run that owns --out ends, local or Dask: one path.

`run_to_the_end(ending, work)` runs the work, then finishes: errors.parquet merged, the
exactly-once check over rows/ (engine.run.store.check_rows), the dataset-level sample
saved and clustered, run.json "complete". Whatever stops it (an error, Ctrl-C, SIGTERM,
SIGHUP: engine.core.processes) is recorded instead: run.json says "failed" with the
error's one line or "interrupted", with what could be saved saved, and the exception
goes on to the CLI (one line, exit 2; or the resume command, exit 128 + signal).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.analysis.dataset import TokenReservoir
from engine.core.errors import DatrError
from engine.run.plan import RunPlan, rows_per_item
from engine.run.record import failure, finish_record
from engine.run.sample import RESERVOIR_FILE
from engine.run.store import check_rows, errored_ids


@dataclass
class Ending:
    """What finishing a run needs besides its plan.

    run: the run.json being written; reservoir: the dataset-level sample (or None);
    fit_sample: clusters it (in this process, or on a Dask worker) and returns what run.json
    records; stages: seconds per stage so far; images_done: counted as the run goes (the
    final count comes from the exactly-once check).
    """

    plan: RunPlan
    run: dict
    started: float
    stages: Callable[[], dict[str, float]]
    reservoir: TokenReservoir | None = None
    fit_sample: Callable[[TokenReservoir], dict] | None = None
    images_done: int = 0
    errors: int = 0

    def write(self) -> None:
        self.plan.store.write_run_json(self.run)


def run_to_the_end(ending: Ending, work: Callable[[], None]) -> None:
    """Run `work`, then finish the run; record how it ended either way (the exception, if any, goes on)."""
    try:
        work()
        complete(ending)
    except BaseException as err:
        salvage(ending, *failure(err))
        raise


def complete(ending: Ending) -> None:
    """The end of a run whose work finished: every item has its rows exactly once (or an error), then run.json."""
    plan, out = ending.plan, ending.plan.cfg.out
    ending.errors = plan.store.merge_errors(plan.known_ids)
    with_rows = check_rows(out, plan.item_ids, rows_per_item(plan.cfg), errored_ids(out))
    ending.images_done = sum(1 for i in plan.todo if plan.item_ids[i] in with_rows)
    if ending.reservoir is not None:
        ending.reservoir.save(out / RESERVOIR_FILE)  # a resumed run continues the same sample
        ending.run["dataset_clustering"] = ending.fit_sample(ending.reservoir)
    record(ending, "complete", None)


def salvage(ending: Ending, status: str, error: str) -> None:
    """The end of a run that stopped: its status first (on a full disk those few bytes matter most), then what can be saved."""
    plan, out = ending.plan, ending.plan.cfg.out

    def save() -> None:
        if ending.reservoir is not None:
            ending.reservoir.save(out / RESERVOIR_FILE)  # the batches that finished stay in the sample
        ending.errors = plan.store.merge_errors(plan.known_ids)

    for step in (lambda: record(ending, status, error), save, lambda: record(ending, status, error)):
        try:
            step()
        except (OSError, DatrError):
            pass  # the error that ended the run is the one to report; what could be saved is saved


def record(ending: Ending, status: str, error: str | None) -> None:
    finish_record(ending.run, status=status, images_done=ending.images_done,
                  images_skipped_resume=ending.plan.skipped_resume, errors=ending.errors,
                  seconds=time.perf_counter() - ending.started, seconds_per_stage=ending.stages(), error=error)
    ending.write()
