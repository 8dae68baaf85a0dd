"""run.json: what a sweep records about itself (config, versions, commit, device, source, timings).

A run's record starts with `run_header` (with the run's identity and its fingerprint,
engine.run.identity) and is written when the run starts (status "running") and again when
it ends (`finish_record`: "complete"; "interrupted" by Ctrl-C, SIGTERM or SIGHUP; "failed" with
the error's one line; counts, seconds per stage). `is_simulated` is the one rule for telling a simulated run from a
real one, whichever version of run.json the folder holds.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

from engine.core.config import RunConfig
from engine.core.errors import DataError, DatrError, os_error_message
from engine.core.processes import Interrupted
from engine.core.versions import versions
from engine.run.identity import fingerprint


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def git_commit() -> str | None:
    """The commit of the code that computed the rows, when it runs from a git checkout."""
    try:
        here = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_header(cfg: RunConfig, identity: dict) -> dict:
    """The first fields of every run.json: status, start time, identity, resolved config, versions, commit."""
    return {
        "status": "running",
        "started": now(),
        "fingerprint": fingerprint(identity),
        "identity": identity,
        "config": cfg.to_json(),
        "versions": versions(),
        "git_commit": git_commit(),
        "device": cfg.device,
    }


def finish_record(run: dict, *, status: str, images_done: int, images_skipped_resume: int, errors: int, seconds: float,
                  seconds_per_stage: dict[str, float], error: str | None = None) -> dict:
    """The closing fields of run.json, updated in place (and returned); status: complete | interrupted | failed."""
    if error is not None:
        run["error"] = error
    run.update({
        "status": status,
        "finished": now(),
        "images_done_this_run": images_done,
        "images_skipped_resume": images_skipped_resume,
        "errors": errors,
        "seconds": seconds,
        "seconds_per_stage": seconds_per_stage,
    })
    return run


def read_run_json(out: Path) -> dict:
    """DIR/run.json as a dict ({} when there is none); DataError when it is not JSON."""
    path = Path(out) / "run.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err}); rerun the sweep or remove the file") from None


def failure(err: BaseException) -> tuple[str, str]:
    """run.json's (status, error) for an exception that ended a run."""
    if isinstance(err, KeyboardInterrupt):
        how = f"by {err.args[0]}" if isinstance(err, Interrupted) else "(Ctrl-C)"
        return "interrupted", f"interrupted {how}; rerun with --resume to continue"
    if isinstance(err, DatrError):
        return "failed", err.message
    if isinstance(err, OSError):
        return "failed", os_error_message(err)
    return "failed", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def is_simulated(run: dict) -> bool:
    """Whether a run's numbers come from the simulated source (directly or through a feature cache of it)."""
    source = run.get("source") or {}
    return bool(run.get("simulated") or source.get("simulated") or source.get("model") == "simulated"
                or (run.get("config") or {}).get("model") == "simulated")
