"""Issue 20, tried again: each case ends in exactly-once rows equal to a fresh run, or one line on stderr with exit 2.

Real processes and real signals where the case is about them: a `datr` started with
subprocess, os.kill at a moment the test waits for (the first row shard on disk, the
"figures: drawing" line), then the exit status, stderr, run.json, the lock and the
helper processes are checked, and `--resume` must reach the rows of an uninterrupted run.
Nothing is timed: a wait only guards against a hang.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
from engine.run.lock import LOCK_FILE
from tests.readback import rows_by_key, run_json

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--n-init", "1", "--seeds", "3", "--dims", "4", "--batch-size", "1", "--num-workers", "0", "--no-progress"]
DATR = [sys.executable, "-c", "import cli; cli.main()"]
IMAGES = 4
SCENES = {"count": IMAGES, "size": (160, 120), "seed": 11}  # the `scenes` fixture (tests/conftest.py)
runner = CliRunner()


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "sweep"
    assert runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST]).exit_code == 0
    return rows_by_key(out)




def start(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """`datr ARGS` as a separate process, this checkout's code, one thread."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([*DATR, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what: str, limit_s: float = 300.0) -> None:
    """Wait until condition() holds (the limit only guards against a hang)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def children(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def leftovers(out: Path) -> list[str]:
    """Temporary files and the lock: what an interrupted run must not leave."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_FILE)


# ----------------------------------------------------------------------------- 1. stale rows


def invert_pixels(path: Path) -> None:
    image = np.asarray(Image.open(path))
    Image.fromarray(255 - image).save(path, quality=95)


def test_changed_items_are_computed_again_and_equal_a_fresh_run(scenes, tmp_path):
    data = Path(shutil.copytree(scenes, tmp_path / "UDD5"))
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert runner.invoke(cli.app, ["sweep", str(data), "--out", str(out), *FAST]).exit_code == 0
    first = {p.name for p in (out / "rows").glob("*.parquet")}
    (out / "figures" / "scene_0001").mkdir(parents=True)  # figures drawn from the old rows
    (out / "figures" / "scene_0001" / "figures.json").write_text("{}")
    invert_pixels(data / "val" / "src" / "scene_0001.JPG")  # new pixels, same name
    gt = data / "val" / "gt" / "scene_0003.png"
    labels = np.asarray(Image.open(gt))
    Image.fromarray(np.where(labels == 0, 2, np.where(labels == 2, 0, labels)).astype(np.uint8)).save(gt)  # relabelled
    resumed = runner.invoke(cli.app, ["sweep", str(data), "--out", str(out), *FAST, "--resume"])
    assert resumed.exit_code == 0 and "2 items analysed, 2 already done" in resumed.output, resumed.output
    assert runner.invoke(cli.app, ["sweep", str(data), "--out", str(fresh), *FAST]).exit_code == 0
    assert rows_by_key(out) == rows_by_key(fresh)
    recomputed = run_json(out)["recomputed"]
    assert set(recomputed["items"]) == {"scene_0001", "scene_0003"} and "scene_0001.JPG changed" in recomputed["items"]["scene_0001"]
    moved = {p.name for p in Path(recomputed["superseded_shards"]).glob("*.parquet")}
    assert len(moved) == 2 and moved <= first  # whole finished shards moved out, not rewritten
    assert (Path(recomputed["superseded_shards"]) / "figures" / "scene_0001" / "figures.json").is_file()
    assert not (out / "figures" / "scene_0001").exists()


def test_a_touched_or_copied_file_changes_nothing(scenes, tmp_path):
    data = Path(shutil.copytree(scenes, tmp_path / "UDD5"))
    out = tmp_path / "out"
    assert runner.invoke(cli.app, ["sweep", str(data), "--out", str(out), *FAST, "--limit", "2"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (out / "rows").iterdir()}
    image = data / "val" / "src" / "scene_0000.JPG"
    image.write_bytes(image.read_bytes())  # rewritten with the same bytes: new mtime and ctime, same content
    resumed = runner.invoke(cli.app, ["sweep", str(data), "--out", str(out), *FAST, "--limit", "2", "--resume"])
    assert resumed.exit_code == 0 and "0 items analysed, 2 already done" in resumed.output, resumed.output
    assert {p.name: p.read_bytes() for p in (out / "rows").iterdir()} == before and not (out / "superseded").exists()


# ----------------------------------------------------------------------------- 2. every signal recorded


@pytest.mark.slow  # a datr process started and signalled
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_is_recorded_and_the_run_resumes_to_the_same_rows(scenes, reference, tmp_path, signum):
    out = tmp_path / "out"
    proc = start("sweep", str(scenes), "--out", str(out), *FAST)
    wait_for(lambda: any((out / "rows").glob("part-*.parquet")) or proc.poll() is not None, "the first row shard")
    proc.send_signal(signum)
    _, stderr = proc.communicate()
    assert proc.returncode == 128 + signum, stderr
    assert "--resume" in stderr.splitlines()[-1] and "Traceback" not in stderr, stderr
    run = run_json(out)
    assert run["status"] == "interrupted" and signal.Signals(signum).name in run["error"]
    assert leftovers(out) == []
    resumed = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume"])
    assert resumed.exit_code == 0 and run_json(out)["status"] == "complete"
    assert rows_by_key(out) == reference


def test_an_interrupt_right_after_the_first_run_json_is_recorded(scenes, tmp_path, monkeypatch):
    import engine.run.store as store

    real = store.ResultStore.write_run_json
    calls = []

    def then_ctrl_c(self, payload):
        real(self, payload)
        calls.append(payload["status"])
        if len(calls) == 1:
            raise KeyboardInterrupt  # just after "running" is on disk

    monkeypatch.setattr(store.ResultStore, "write_run_json", then_ctrl_c)
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST])
    assert result.exit_code == 130 and "--resume" in result.output
    assert calls[0] == "running" and run_json(out)["status"] == "interrupted" and not (out / LOCK_FILE).exists()


def test_an_interrupt_while_the_run_plans_leaves_a_folder_that_resumes(scenes, reference, tmp_path, monkeypatch):
    import engine.run.plan as plan

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt  # indexing a large dataset, hashing a checkpoint: before run.json exists

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(plan, "index_dataset", ctrl_c)
        stopped = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST])
    assert stopped.exit_code == 130 and "--resume" in stopped.output and not (out / "run.json").exists()
    resumed = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume"])  # as the message says
    assert resumed.exit_code == 0 and "holds no run record yet" in resumed.output, resumed.output
    assert rows_by_key(out) == reference and run_json(out)["status"] == "complete"


@pytest.mark.slow  # a datr process started and signalled
def test_loader_workers_die_with_a_killed_run(scenes, tmp_path):
    out = tmp_path / "out"
    proc = start("sweep", str(scenes), "--out", str(out), *FAST[:-3], "--num-workers", "2", "--no-progress")
    wait_for(lambda: len(children(proc.pid)) >= 2 or proc.poll() is not None, "the DataLoader workers")
    workers = children(proc.pid)
    assert proc.poll() is None and len(workers) >= 2
    proc.kill()
    proc.communicate()
    wait_for(lambda: not any(alive(pid) for pid in workers), "the loader workers to end")
    resumed = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume"])
    assert resumed.exit_code == 0 and run_json(out)["status"] == "complete"


# ----------------------------------------------------------------------------- 6 and 9: figures


def drawing(proc: subprocess.Popen, lines: list[str]) -> bool:
    """Reads the run's stdout until it says it draws the figures."""
    line = proc.stdout.readline()
    lines.append(line)
    return line.startswith("figures: drawing") or (line == "" and proc.poll() is not None)


def complete_figures(out: Path) -> set[str]:
    from engine.present.figures.parallel import figures_complete

    return {p.name for p in (out / "figures").iterdir() if figures_complete(out, p.name, ("png",))}


def start_drawing(scenes: Path, out: Path) -> tuple[subprocess.Popen, list[int], list[str]]:
    """A sweep into `out` with two images' figures, once its figure workers draw: (process, their pids, its output)."""
    proc = start("sweep", str(scenes), "--out", str(out), *FAST, "--figures", "2")
    lines: list[str] = []
    wait_for(lambda: drawing(proc, lines), "the figures to start")
    wait_for(lambda: len(children(proc.pid)) >= 2 or proc.poll() is not None, "the figure workers")
    return proc, children(proc.pid), lines


@pytest.mark.slow  # a datr process started and signalled
def test_figure_workers_die_with_a_killed_run_and_resume_draws_what_is_missing(scenes, reference, tmp_path):
    out = tmp_path / "out"
    proc, workers, lines = start_drawing(scenes, out)
    assert proc.poll() is None and len(workers) >= 2, lines
    proc.kill()  # kill -9: nothing of the parent runs
    proc.communicate()
    wait_for(lambda: not any(alive(pid) for pid in workers), "the figure workers to end")
    assert run_json(out)["status"] == "complete" and len(complete_figures(out)) < 2
    resumed = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume", "--figures", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert "0 items analysed, 4 already done" in resumed.output and "analysed again for their figures" in resumed.output
    assert complete_figures(out) == {"scene_0000", "scene_0001"} and rows_by_key(out) == reference


@pytest.mark.slow  # a datr process started and signalled
def test_sigterm_while_figures_are_drawn_stops_the_workers_and_resume_draws_only_the_missing(scenes, tmp_path):
    out = tmp_path / "out"
    proc, workers, lines = start_drawing(scenes, out)
    proc.terminate()
    _, stderr = proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM and "--resume" in stderr, stderr
    wait_for(lambda: not any(alive(pid) for pid in workers), "the figure workers to end")
    assert leftovers(out) == []
    drawn = complete_figures(out)
    resumed = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume", "--figures", "2"])
    assert resumed.exit_code == 0 and complete_figures(out) == {"scene_0000", "scene_0001"}
    assert f"{len(drawn)} of the 2 image(s) asked for are drawn already" in resumed.output


# ----------------------------------------------------------------------------- 3 and 4: one writer per feature cache


def cache_ids(cache: Path) -> list[str]:
    return json.loads((cache / "index.json").read_text())["image_ids"]


def renamed_copy(scenes: Path, where: Path) -> Path:
    """The same scenes under other stems (another dataset for the cache)."""
    data = Path(shutil.copytree(scenes, where / "UDD5"))
    for folder in ("src", "gt"):
        for path in (data / "val" / folder).iterdir():
            path.rename(path.with_name("b_" + path.name))
    return data


@pytest.mark.slow  # two datr processes at once
def test_two_runs_on_one_feature_cache_lose_nothing(scenes, tmp_path):
    cache, other = tmp_path / "cache", renamed_copy(scenes, tmp_path / "d2")
    runs = [["sweep", str(data), "--out", str(tmp_path / name), *FAST, "--save-features", str(cache)]
            for data, name in ((scenes, "a"), (other, "b"))]
    procs = [start(*args) for args in runs]
    results = [(p.wait(), p.communicate()[1]) for p in procs]
    files = sorted(p.stem for p in cache.glob("*.safetensors"))
    assert sorted(cache_ids(cache)) == files  # whatever the timing: the index lists exactly the files
    refused = [i for i, (code, _) in enumerate(results) if code == 2]
    assert all(code in (0, 2) for code, _ in results) and len(refused) <= 1, results
    assert len(files) == (IMAGES if refused else 2 * IMAGES)
    for i in refused:  # the two overlapped: the second was refused in one line before it wrote anything
        error = results[i][1]
        assert error.count("datr: error:") == 1 and f"--save-features {cache}: another datr run" in error, error
        assert runner.invoke(cli.app, runs[i]).exit_code == 0  # run again, it extends the cache
    assert sorted(cache_ids(cache)) == sorted(p.stem for p in cache.glob("*.safetensors"))
    assert len(cache_ids(cache)) == 2 * IMAGES


def test_a_cache_held_by_a_live_run_is_refused_in_one_line(scenes, tmp_path, one_line_error):
    cache = tmp_path / "cache"
    holder = hold_lock(cache)
    try:
        result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(tmp_path / "o"), *FAST, "--save-features", str(cache)])
        one_line_error(result, f"--save-features {cache}: another datr run (pid {holder.pid}", "choose another --save-features")
    finally:
        release(holder)
    assert not list(cache.glob("*.safetensors")) and not (tmp_path / "o" / "rows").exists()


def test_a_cache_from_another_source_is_not_extended(scenes, tmp_path, one_line_error):
    cache = tmp_path / "cache"
    assert runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(tmp_path / "a"), *FAST, "--limit", "1",
                                   "--save-features", str(cache)]).exit_code == 0
    toml = tmp_path / "run.toml"
    toml.write_text("[simulated]\nseed = 1\n")
    index_before = (cache / "index.json").read_bytes()
    result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(tmp_path / "b"), *FAST, "--config", str(toml),
                                     "--save-features", str(cache)])
    one_line_error(result, f"--save-features {cache}: holds features of another source (simulated.seed: cache 0, now 1)")
    assert (cache / "index.json").read_bytes() == index_before and cache_ids(cache) == ["scene_0000"]
    assert run_json(tmp_path / "b")["status"] == "failed"


def test_the_cache_index_is_rebuilt_from_the_files(scenes, tmp_path):
    cache = tmp_path / "cache"
    assert runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(tmp_path / "a"), *FAST, "--limit", "2",
                                   "--save-features", str(cache)]).exit_code == 0
    meta = json.loads((cache / "index.json").read_text())
    (cache / "index.json").write_text(json.dumps({**meta, "image_ids": ["scene_0001"]}))  # as a crash before the index write
    assert runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(tmp_path / "b"), *FAST, "--limit", "3",
                                   "--save-features", str(cache)]).exit_code == 0
    assert cache_ids(cache) == ["scene_0001", "scene_0000", "scene_0002"]


# ----------------------------------------------------------------------------- 5. the lock


HOLD = """
import sys
from engine.run.lock import FolderLock
with FolderLock(sys.argv[1], "--out"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`'s lock until release()."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.communicate("\n")
    assert proc.returncode == 0


RACE = """
import os, sys
from engine.core.errors import ConfigError
from engine.run.lock import FolderLock
folder, rounds, held, clashes = sys.argv[1], int(sys.argv[2]), 0, 0
for _ in range(rounds):
    try:
        with FolderLock(folder, "--out"):
            held += 1
            try:  # inside the lock nobody else may be
                fd = os.open(os.path.join(folder, "inside"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                clashes += 1
                continue
            os.close(fd)
            os.sched_yield()
            os.unlink(os.path.join(folder, "inside"))
    except ConfigError:
        pass
print(held, clashes)
"""


def test_processes_racing_for_the_lock_never_hold_it_together(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(folder), "300"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    counts = [tuple(map(int, p.communicate()[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(clashes for _, clashes in counts) == 0 and sum(held for held, _ in counts) > 0
    assert not (folder / LOCK_FILE).exists()  # the last holder removed it; nobody else removes it


def test_a_lock_file_nobody_holds_is_taken_whatever_pid_it_names(scenes, reference, tmp_path):
    out = tmp_path / "out"
    killed = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline() == "held\n"
    killed.kill()  # kill -9 while holding: the file stays, the kernel drops the lock
    killed.wait()
    assert (out / LOCK_FILE).exists()
    (out / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))  # a reused live pid
    result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST])
    assert result.exit_code == 0 and rows_by_key(out) == reference and not (out / LOCK_FILE).exists()


def test_a_lock_whose_holder_has_not_written_its_pid_yet_is_not_called_stale(scenes, tmp_path, one_line_error):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        (out / LOCK_FILE).write_text("")  # between the holder's flock and its write
        result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST])
        line = one_line_error(result, f"--out {out}: another datr run is writing it", "choose another --out")
        assert "stale" not in line and "gone" not in line
    finally:
        release(holder)
    assert not (out / "rows").exists()


# ----------------------------------------------------------------------------- 7, 8, 10, 11: options


@pytest.mark.parametrize("args,message", [
    (["--prompts", "a,,b,c,d"], "--prompts: 'a,,b,c,d' has an empty entry"),
    (["--alpha", "0.3,"], "--alpha: '0.3,' has an empty entry"),
    (["--prompts", "x" * 300 + ",b,c,d,e"], "--prompts: a prompt of 300 characters"),
    (["--prompts", "red car,red_car,c,d,e"], "'red car' and 'red_car' make the same figure file names"),
    (["--figure-ids", "scene_0000,", "--figures", "1"], "--figure-ids: 'scene_0000,' has an empty entry"),
    (["--seeds", "2"], "--seeds: need 0 (no seed ensemble, no effects) or >= 3"),
])
def test_bad_list_options_are_refused_before_any_work(scenes, tmp_path, args, message, one_line_error):
    out = tmp_path / "o"
    one_line_error(runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, *args]), message)
    assert not out.exists()


def test_a_list_option_given_twice_appends(scenes, tmp_path):
    out = tmp_path / "o"
    result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--limit", "1", "--alpha", "0.3",
                                     "--alpha", "0.5", "--tau", "0.5", "--prompts", "trees,houses", "--prompts", "road,car,misc"])
    assert result.exit_code == 0, result.output
    config = run_json(out)["config"]
    assert config["analysis"]["alphas"] == [0.3, 0.5] and config["prompts"] == ["trees", "houses", "road", "car", "misc"]


def test_resume_where_there_is_nothing_to_resume_is_refused(scenes, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = start("sweep", str(scenes), "--out", "runs/r1", *FAST, "--resume", cwd=elsewhere)  # a relative --out, elsewhere
    _, stderr = proc.communicate()
    assert proc.returncode == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"datr: error: --resume: nothing to resume at {elsewhere / 'runs' / 'r1'}") and "drop --resume" in stderr
    assert not (elsewhere / "runs").exists()


# ----------------------------------------------------------------------------- identity


def test_the_identity_holds_what_was_resolved_and_refuses_another_on_resume(scenes, tmp_path, one_line_error):
    out = tmp_path / "o"
    assert runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--limit", "1"]).exit_code == 0
    identity = run_json(out)["identity"]
    assert (identity["decode"], identity["backend_used"], identity["eigh_used"]) == ("cpu", "torch", "torch")
    assert identity["backend"] == "auto" and identity["eigh"] == "auto"  # what was asked stays beside what ran
    run = run_json(out)
    run["identity"]["eigh_used"] = "cupy"  # as if the run had been made on a GPU node
    (out / "run.json").write_text(json.dumps(run))
    result = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume"])
    one_line_error(result, "--eigh (as resolved on this machine) (run: cupy, now: torch)", "new --out")


def test_a_sam3_source_is_known_by_every_byte_of_its_checkpoint_and_bpe_and_its_autocast(tmp_path, monkeypatch):
    import engine.core.files as files
    from engine.core.config import RunConfig
    from engine.run.identity import source_identity

    monkeypatch.setenv("DATR_HASH_CACHE", str(tmp_path / "hashes.json"))
    head = os.urandom(1 << 20)
    a, b, bpe = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "bpe.txt.gz"
    a.write_bytes(b"PK\x03\x04" + head + b"frozen early layers, one tuned head")
    b.write_bytes(b"PK\x03\x04" + head + b"frozen early layers, another head!!")  # same first MiB, same size
    bpe.write_bytes(b"vocabulary")
    ids = {name: source_identity(RunConfig(model="sam3", checkpoint=path, bpe_path=bpe)) for name, path in (("a", a), ("b", b))}
    assert a.stat().st_size == b.stat().st_size and ids["a"]["checkpoint"] != ids["b"]["checkpoint"]
    assert ids["a"]["autocast"] == "off"
    assert source_identity(RunConfig(model="sam3", checkpoint=a, bpe_path=bpe, device="cuda"))["autocast"] == "bfloat16"
    hashed = []
    monkeypatch.setattr("engine.sources.sam3.checkpoint.file_sha256", lambda p: hashed.append(p) or files.file_sha256(p))
    assert source_identity(RunConfig(model="sam3", checkpoint=a, bpe_path=bpe)) == ids["a"] and hashed == []  # cached
    stat = a.stat()
    a.write_bytes(b.read_bytes())  # another checkpoint in place, its size and mtime put back
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source_identity(RunConfig(model="sam3", checkpoint=a, bpe_path=bpe))["checkpoint"] == ids["b"]["checkpoint"]
    assert hashed == [a]


@pytest.mark.slow  # a datr process started and signalled
def test_sigterm_to_a_dask_client_is_recorded_and_resumes_to_the_same_rows(scenes, reference, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    proc = start("sweep", str(scenes), "--out", str(out), *FAST, "--cluster", "local", "--dask-workers", "1")
    wait_for(lambda: any((out / "rows").glob("part-*.parquet")) or proc.poll() is not None, "the first row shard")
    helpers = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM and "--resume" in stderr.splitlines()[-1], stderr
    run = run_json(out)
    assert run["status"] == "interrupted" and "SIGTERM" in run["error"] and "cluster" in run
    assert leftovers(out) == []
    wait_for(lambda: not any(alive(pid) for pid in helpers), "the cluster's processes to end")
    resumed = runner.invoke(cli.app, ["sweep", str(scenes), "--out", str(out), *FAST, "--resume"])
    assert resumed.exit_code == 0 and run_json(out)["status"] == "complete"
    assert rows_by_key(out) == reference


def test_forgetting_a_recomputed_item_gives_the_sample_of_a_fresh_run():
    import torch

    from engine.analysis.dataset import TokenReservoir
    from engine.run.sample import forget_items

    g = torch.Generator().manual_seed(0)
    old, new, rest = (torch.randn(1, 5184, 8, generator=g) for _ in range(3))
    resumed = TokenReservoir(3000, seed=2, channels=8)
    resumed.add(torch.cat([old, rest]), None, ["b", "c"])  # "b" as it was first computed
    forget_items(resumed, {"b"})
    resumed.add(new, None, ["b"])  # "b" computed again from its new pixels
    fresh = TokenReservoir(3000, seed=2, channels=8)
    fresh.add(torch.cat([new, rest]), None, ["b", "c"])
    assert resumed.tokens_seen == fresh.tokens_seen and list(resumed.image_ids) == list(fresh.image_ids)
    assert np.array_equal(resumed.priorities, fresh.priorities) and torch.equal(resumed.tokens, fresh.tokens)
