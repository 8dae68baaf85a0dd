"""The sweep on a Dask cluster (2 worker processes, simulated model): the local run's rows, exactly once.

One LocalCluster serves the module (started through open_cluster, then joined by address
as `--scheduler` does); the worker-kill test leaves it one worker restarted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("distributed")

import engine.run.sweep as pipeline  # noqa: E402
from engine.analysis.dataset import TokenReservoir  # noqa: E402
from engine.core.config import AnalysisConfig, DataConfig, RunConfig  # noqa: E402
from engine.core.errors import ConfigError, DataError  # noqa: E402
from engine.core.options import DATA_FIELDS  # noqa: E402
from engine.run.distributed import (  # noqa: E402
    ClusterConfig,
    check_run_config,
    check_shared_paths,
    open_cluster,
    plan_shards,
    run_distributed_sweep,
    run_shard,
)
from engine.run.plan import rows_per_item  # noqa: E402
from engine.run.sample import RESERVOIR_FILE  # noqa: E402
from engine.run.store import check_rows, read_rows  # noqa: E402

ANALYSIS = AnalysisConfig(n_init=2, dims=(8,), silhouette_sample=200, seeds=3)
SAMPLED = replace(ANALYSIS, dataset_sample=3000)  # tokens in the dataset-level sample (of 4 x 5184)
SLOTS_PER_IMAGE = 1 + 6  # encoder + global + 5 prompts
pytestmark = pytest.mark.slow  # Dask clusters of worker processes

IMAGES = 4
SCENES = {"count": IMAGES, "size": (400, 300), "seed": 3}  # the `scenes` fixture (tests/conftest.py)
ROOT = Path(__file__).resolve().parent.parent


def shard(out: Path, first_position: int) -> Path:
    """The row shard of the batch that starts at item `first_position`."""
    (path,) = (out / "rows").glob(f"part-{first_position:06d}-*.parquet")
    return path

def quiet(_: str) -> None:
    pass


def config(scenes, out, **kw) -> RunConfig:
    data = DataConfig(root=scenes, num_workers=0, **{k: kw.pop(k) for k in list(kw) if k in DATA_FIELDS})
    return replace(RunConfig(data=data, out=out, model="simulated", batch_size=2, analysis=ANALYSIS), **kw)


def sorted_rows(out):
    return read_rows(out).sort_by([("image_id", "ascending"), ("scope", "ascending"), ("alpha", "ascending")]).to_pylist()


def row_keys(out) -> list[tuple]:
    return [(r["image_id"], r["scope"], r["tau"], r["alpha"], r["d"], r["k"]) for r in read_rows(out).to_pylist()]


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    """The one-process sweep, with the dataset-level sample and clustering."""
    out = tmp_path_factory.mktemp("ref") / "sweep"
    pipeline.run_sweep(config(scenes, out, analysis=SAMPLED), echo=quiet, show_progress=False)
    return out


@pytest.fixture(scope="module")
def scheduler():
    with open_cluster(ClusterConfig(cluster="local", workers=2), "cpu", quiet) as handle:
        assert len(handle.client.scheduler_info()["workers"]) == 2
        yield handle.address


def dies_once_mid_shard(cfg, positions, index, run_id, token_sample, *, marker: Path):
    """The first shard of two or more items to get here writes its first item, then kills its worker."""
    if len(positions) >= 2:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            run_shard(cfg, positions[:1], index, run_id)
            os._exit(1)
    return run_shard(cfg, positions, index, run_id, token_sample)


def test_cluster_sweep_writes_the_local_runs_files(scenes, reference, scheduler, tmp_path):
    ref_out = reference
    out = tmp_path / "cluster"
    result = run_distributed_sweep(config(scenes, out, analysis=SAMPLED), ClusterConfig(scheduler=scheduler), echo=quiet,
                                   show_progress=False)
    assert result.images_done == IMAGES and result.errors == 0 and result.images_skipped_resume == 0
    # whole-batch shards from position 0: the same batches, so the same files with the same rows
    names = sorted(p.name for p in (out / "rows").glob("*.parquet"))
    assert names == sorted(p.name for p in (ref_out / "rows").glob("*.parquet"))
    for name in names:
        assert pq.read_table(out / "rows" / name).equals(pq.read_table(ref_out / "rows" / name)), name
    assert pq.read_table(out / "errors.parquet").num_rows == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["simulated"] is True and run["backend"]["used"] == "torch"
    cluster = run["cluster"]
    assert cluster["scheduler"] == scheduler and cluster["workers"] == 2 and cluster["shards"] == 2
    assert [d["device"] for d in cluster["devices"]] == ["cpu", "cpu"]
    assert sum(r["items"] for r in cluster["shard_reports"]) == IMAGES
    assert run["images_done_this_run"] == IMAGES and run["config"]["resume"] is False
    # the per-shard samples merge into the sample one process draws, and give the same fit
    sample, local_sample = (TokenReservoir.load(d / RESERVOIR_FILE) for d in (out, ref_out))
    assert len(sample) == SAMPLED.dataset_sample and sample.tokens_seen == local_sample.tokens_seen == IMAGES * 72 * 72
    assert np.array_equal(sample.priorities, local_sample.priorities) and torch.equal(sample.tokens, local_sample.tokens)
    saved, local = (json.loads((d / "dataset_clustering.json").read_text())["results"] for d in (out, ref_out))
    assert saved == local and saved[0]["images"] == IMAGES
    assert run["dataset_clustering"]["tokens"] == SAMPLED.dataset_sample


def test_killed_worker_its_shard_retried_every_row_once(scenes, reference, scheduler, tmp_path):
    from functools import partial

    out = tmp_path / "killed"
    marker = tmp_path / "killed-once"
    task = partial(dies_once_mid_shard, marker=marker)
    result = run_distributed_sweep(config(scenes, out), ClusterConfig(scheduler=scheduler), echo=quiet,
                                   show_progress=False, shard_task=task)
    assert marker.exists()  # a worker did die mid-shard, after writing part of it
    keys = row_keys(out)
    assert len(keys) == len(set(keys)) == IMAGES * SLOTS_PER_IMAGE
    assert sorted_rows(out) == sorted_rows(reference)
    assert result.images_done == IMAGES
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_resume_across_runs_through_the_cli(scenes, reference, scheduler, tmp_path):
    from typer.testing import CliRunner

    import cli

    out = tmp_path / "resumed"
    shutil.copytree(reference, out)
    shard(out, 2).unlink()  # a local run that stopped after its first batch
    # --num-workers 1: DataLoader workers inside the Dask workers (one of them restarted by the kill test)
    toml = tmp_path / "run.toml"
    toml.write_text(f"[analysis]\nsilhouette_sample = {ANALYSIS.silhouette_sample}\n")  # as the reference (no CLI option)
    args = ["sweep", str(scenes), "--out", str(out), "--scheduler", scheduler, "--batch-size", "2", "--num-workers", "1",
            "--n-init", "2", "--seeds", "3", "--dims", "8", "--no-progress", "--config", str(toml)]
    refused = CliRunner().invoke(cli.app, args)
    assert refused.exit_code == 2 and "--resume" in refused.output
    done = CliRunner().invoke(cli.app, [*args, "--resume"])
    assert done.exit_code == 0, done.output
    assert "2 items analysed, 2 already done" in done.output
    assert sorted_rows(out) == sorted_rows(reference)
    run = json.loads((out / "run.json").read_text())
    assert run["images_skipped_resume"] == 2 and run["cluster"]["shards"] == 1


def sees_another_run(cfg, positions, index, run_id, token_sample):
    """A shard on a worker whose --out holds another run's run.json (the worker-side path check fails)."""
    return run_shard(cfg, positions, index, "another-run", token_sample)


def test_a_shard_error_stops_the_sweep_with_its_message(scenes, scheduler, tmp_path):
    # what the client can tell (the run plan, shared with a local sweep) is refused before any shard runs
    with pytest.raises(DataError, match="simulated model needs ground truth"):
        run_distributed_sweep(config(scenes, tmp_path / "no-gt", kind="images"), ClusterConfig(scheduler=scheduler),
                              echo=quiet, show_progress=False)
    out = tmp_path / "bad-shard"
    with pytest.raises(DataError, match="does not see this run's"):
        run_distributed_sweep(config(scenes, out), ClusterConfig(scheduler=scheduler), echo=quiet, show_progress=False,
                              shard_task=sees_another_run)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "does not see this run's" in run["error"]


def test_a_worker_that_cannot_see_out_or_the_dataset_says_so(scenes, tmp_path):
    from engine.core.config import DataConfig
    from engine.data.index import index_dataset

    index = index_dataset(DataConfig(root=scenes))
    cfg = config(scenes, tmp_path / "elsewhere")
    with pytest.raises(DataError, match="shared by the client and every worker"):
        check_shared_paths(cfg, index, [0], "run-1")
    cfg.out.mkdir()
    (cfg.out / "run.json").write_text(json.dumps({"cluster": {"run_id": "run-1"}}))
    check_shared_paths(cfg, index, [0], "run-1")
    moved = replace(index, items=[replace(it, image_path=tmp_path / "gone.JPG") for it in index.items])
    with pytest.raises(DataError, match="gone.JPG: not found on worker .* dataset must be on a filesystem shared"):
        check_shared_paths(cfg, moved, [0], "run-1")


def test_a_plain_sweep_imports_nothing_of_dask(scenes, tmp_path):
    code = (
        "import sys; from typer.testing import CliRunner; import cli\n"
        f"r = CliRunner().invoke(cli.app, ['sweep', {str(scenes)!r}, '--out', {str(tmp_path / 'plain')!r}, '--limit', '1',"
        " '--num-workers', '0', '--n-init', '1', '--seeds', '3', '--dims', '8', '--no-progress'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'dask_cuda')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_shards_are_whole_batches_covering_every_position_once():
    positions = [p for p in range(103) if p % 7]  # a resumed run: holes where items finished
    for workers in (1, 3, 8):
        shards = plan_shards(positions, 4, workers)
        assert [p for s in shards for p in s] == positions
        assert all(len(s) % 4 == 0 for s in shards[:-1])
        assert len(shards) <= 4 * workers
    assert plan_shards([0, 1, 2], 4, 2) == [[0, 1, 2]]
    assert plan_shards(list(range(10)), 2, 1, shard_size=3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_row_check_names_duplicated_and_missing_rows(scenes, reference, tmp_path):
    cfg = config(scenes, tmp_path / "x")
    from engine.core.config import DataConfig
    from engine.data.index import index_dataset

    index = index_dataset(DataConfig(root=scenes, split=cfg.data.split))
    item_ids = [it.image_id for it in index.items]
    assert rows_per_item(cfg) == SLOTS_PER_IMAGE
    doubled = tmp_path / "doubled"
    shutil.copytree(reference, doubled)
    copy = doubled / "rows" / shard(doubled, 2).name.replace("part-000002", "part-000003")
    shutil.copy(shard(doubled, 2), copy)
    with pytest.raises(DataError, match=f"more than once.*{shard(doubled, 2).name}', '{copy.name}"):
        check_rows(doubled, item_ids, SLOTS_PER_IMAGE, set())
    copy.unlink()
    shard(doubled, 0).unlink()
    with pytest.raises(DataError, match="2 without rows or an error.*--resume"):
        check_rows(doubled, item_ids, SLOTS_PER_IMAGE, set())
    ids = {it.image_id for it in index.items}
    assert check_rows(doubled, item_ids, SLOTS_PER_IMAGE, {"scene_0000", "scene_0001"}) == ids - {"scene_0000", "scene_0001"}


def test_cluster_options_that_cannot_work_say_why(scenes, tmp_path):
    with pytest.raises(ConfigError, match="either --scheduler"):
        ClusterConfig().validate()
    with pytest.raises(ConfigError, match="either --scheduler"):
        ClusterConfig(scheduler="tcp://x:8786", cluster="local").validate()
    with pytest.raises(ConfigError, match="only 'local'"):
        ClusterConfig(cluster="slurm").validate()
    with pytest.raises(ConfigError, match="--dask-workers applies to --cluster local"):
        ClusterConfig(scheduler="tcp://x:8786", workers=2).validate()
    with pytest.raises(ConfigError, match="--device cuda"):
        check_run_config(config(scenes, tmp_path, device="cuda:1"))
    with pytest.raises(ConfigError, match="--save-features"):
        check_run_config(config(scenes, tmp_path, save_features=tmp_path / "c"))
    with pytest.raises(ConfigError, match="cannot connect"):
        run_distributed_sweep(config(scenes, tmp_path / "none"), ClusterConfig(scheduler="tcp://127.0.0.1:9", connect_timeout=1),
                              echo=quiet, show_progress=False)
