"""One sweep over many workers with Dask: shards of item positions, the one-device pipeline on each.

The client plans the run as a local sweep does (engine.run.plan: config, --out, the
dataset index, what is finished) and cuts the unfinished item positions into contiguous
shards (whole batches each). Each shard is one task that runs `run_sweep` in shard
mode on a worker; the worker keeps its model between shards (`WorkerState`, a worker
plugin), so the model loads once per worker process. Rows land in the ordinary layout
under --out (rows/part-NNNNNN.parquet), so a cluster run, a local run and `--resume`
across both read and write the same folder.

A shard task is a pure function of (config, positions) that skips finished items, and
rows are bitwise independent of the batch they were computed in: a shard retried after
its worker died rewrites identical files. The client then finishes the run as a local run
does (engine.run.finish: every item's rows exactly once or an error, the sample, run.json
with the cluster it ran on; or, when it stops, how it stopped). The run's "auto" choices
(backend, eigensolver, decode) are resolved on the workers, which may have a GPU the
client lacks, and must agree.

The dataset and --out must be at the same path on every worker (a shared filesystem);
each shard checks both and says so when they are not. This is the project's Dask
adapter: nothing else imports dask, and the CLI imports this module only when a sweep
asks for --scheduler or --cluster.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from engine.analysis.dataset import TokenReservoir
from engine.core.config import RunConfig
from engine.core.devices import device_name, parse_device, set_matmul_precision
from engine.core.errors import ConfigError, DataError
from engine.run.finish import Ending, run_to_the_end
from engine.run.lock import FolderLock
from engine.run.plan import Choices, check_target, open_backend, plan_run, resolve_choices
from engine.run.progress import progress_bar
from engine.run.record import run_header
from engine.run.sample import cluster_reservoir, open_reservoir
from engine.run.sweep import SweepResult, move_stale_shards, run_sweep
from engine.sources.factory import build_source

try:
    import distributed
    from distributed import WorkerPlugin
except ImportError:
    raise ConfigError("--scheduler/--cluster need dask.distributed; install it with pip install 'sam3-datr[dask]'") from None

PLUGIN_NAME = "datr-worker-state"
SHARDS_PER_WORKER = 4  # enough tasks to balance uneven shards and to lose little to a killed worker
TMP_RACE_RETRIES = 3
log = logging.getLogger("datr.distributed")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the sweep runs: an existing scheduler, or a cluster started on this machine.

    scheduler: address of a running dask.distributed scheduler (tcp://HOST:8786).
    cluster: "local" starts a LocalCluster (CPU) or dask-cuda LocalCUDACluster (--device cuda).
    workers: worker processes of the local cluster (default: one per GPU; 2 on a CPU).
    threads: torch CPU threads in each worker (default: the client's torch thread count, so
        a cluster run reduces in the same order as a local run on this machine).
    shard_size: items per shard (default: whole batches, about 4 shards per worker).
    connect_timeout: seconds to wait for the scheduler and for its first worker.
    """

    scheduler: str | None = None
    cluster: str | None = None
    workers: int | None = None
    threads: int | None = None
    shard_size: int | None = None
    connect_timeout: float = 60.0

    def validate(self) -> ClusterConfig:
        if (self.scheduler is None) == (self.cluster is None):
            raise ConfigError("give either --scheduler ADDRESS (join a running Dask scheduler) or --cluster local, not both")
        if self.cluster is not None and self.cluster != "local":
            raise ConfigError(f"--cluster: only 'local' is supported (use --scheduler ADDRESS for a remote one), got {self.cluster!r}")
        if self.workers is not None and self.scheduler is not None:
            raise ConfigError("--dask-workers applies to --cluster local; a --scheduler has the workers started beside it")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--dask-workers: need >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads: need >= 1, got {self.threads}")
        if self.shard_size is not None and self.shard_size < 1:
            raise ConfigError(f"shard_size: need >= 1, got {self.shard_size}")
        return self


def check_run_config(cfg: RunConfig) -> None:
    """What a cluster sweep cannot do (yet); each says what to do instead."""
    if cfg.from_cache is not None:
        raise ConfigError("--from-cache runs on one node; drop --scheduler/--cluster for a cached sweep")
    if cfg.save_features is not None:
        raise ConfigError("--save-features runs on one node (one cache writer); drop --scheduler/--cluster to write a cache")
    if cfg.figures:
        raise ConfigError("--figures draws on one node; run the cluster sweep without it, then `datr analyze IMAGE` for figures")
    if cfg.device.startswith("cuda:") and cfg.device != "cuda:0":
        raise ConfigError(f"--device {cfg.device}: every Dask worker sees its own GPU as cuda; use --device cuda")


def plan_shards(positions: list[int], batch_size: int, workers: int, shard_size: int | None = None) -> list[list[int]]:
    """Contiguous runs of `positions`, each a whole number of batches, about 4 per worker.

    Shards made of whole batches from position 0 give the same batches, hence the same
    row files, as a local run.
    """
    if shard_size is None:
        per_shard = max(1, math.ceil(len(positions) / (SHARDS_PER_WORKER * max(workers, 1))))
        shard_size = batch_size * math.ceil(per_shard / batch_size)
    return [positions[s : s + shard_size] for s in range(0, len(positions), shard_size)]


# ----------------------------------------------------------------------------- worker side


class WorkerState(WorkerPlugin):
    """Per-worker-process state: the models built so far, keyed by what builds them.

    Registered by the client once per sweep; a worker that joins or restarts later gets it
    too. Tasks reach it with `worker_state()`.
    """

    def __init__(self, threads: int | None = None, device: str = "cpu"):
        self.threads = threads
        self.device = device
        self.sources: dict[str, object] = {}

    def setup(self, worker) -> None:
        """The worker process's switches, as the CLI sets them for a local run."""
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        set_matmul_precision(self.device)  # parity with a one-process run: fp32 means fp32

    def teardown(self, worker) -> None:
        self.sources.clear()

    def source_for(self, cfg: RunConfig):
        """The feature source for cfg, built on first use and kept for the worker's lifetime."""
        key = json.dumps([cfg.model, str(cfg.checkpoint), str(cfg.bpe_path), cfg.device, list(cfg.prompts),
                          list(cfg.class_ids), cfg.grid_chunk, sorted(asdict(cfg.simulated).items())])
        if key not in self.sources:
            self.sources[key] = build_source(cfg, parse_device(cfg.device))
        return self.sources[key]


def worker_state() -> WorkerState:
    worker = distributed.get_worker()
    state = worker.plugins.get(PLUGIN_NAME)
    if state is None:  # a worker that missed the registration: state for this process anyway
        state = WorkerState()
        worker.plugins[PLUGIN_NAME] = state
    return state


def describe_worker(device: str) -> dict:
    """Where this worker runs and which device `device` means there (client.run on every worker)."""
    import multiprocessing

    import torch

    info = {"host": socket.gethostname(), "pid": os.getpid(), "device": device,
            "daemon": multiprocessing.current_process().daemon,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if device.startswith("cuda") and not torch.cuda.is_available():
        info["device_name"] = "no CUDA device on this worker"
    else:
        info["device_name"] = device_name(torch.device("cuda", 0) if device.startswith("cuda") else torch.device("cpu"))
    return info


def resolve_on_worker(cfg: RunConfig) -> Choices:
    """The run's backend, eigensolver and decode path as this worker resolves them (client.run on every worker)."""
    return resolve_choices(cfg, parse_device(cfg.device))[1]


def check_shared_paths(cfg: RunConfig, index, positions: list[int], run_id: str) -> None:
    """A worker that cannot see the client's --out or dataset stops with the reason."""
    host = socket.gethostname()
    marker = Path(cfg.out) / "run.json"
    try:
        seen = json.loads(marker.read_text()).get("cluster", {}).get("run_id")
    except (OSError, ValueError):
        seen = None
    if seen != run_id:
        raise DataError(f"--out {cfg.out}: worker {host} does not see this run's {marker}; --out must be on a filesystem "
                        "shared by the client and every worker, at the same path")
    image = index.items[positions[0]].image_path
    if not Path(image).is_file():
        raise DataError(f"{image}: not found on worker {host}; the dataset must be on a filesystem shared by the client and "
                        "every worker, at the same path")


class SampledSource:
    """A feature source that also offers each batch's encoder tokens to a TokenReservoir."""

    def __init__(self, source, reservoir):
        self.source = source
        self.reservoir = reservoir

    def __getattr__(self, name):  # name, prompts, device, describe() of the wrapped source
        return getattr(self.source, name)

    def run_batch(self, images, image_ids, taus, gt_mask=None, gt_tokens=None, keep_mask_probs=False):
        out = self.source.run_batch(images, image_ids, taus, gt_mask=gt_mask, gt_tokens=gt_tokens, keep_mask_probs=keep_mask_probs)
        tokens = out.features.flatten(2).transpose(1, 2)  # (B, N, C)
        labels = None if gt_tokens is None else gt_tokens.to(tokens.device).flatten(1)  # (B, N)
        self.reservoir.add(tokens, labels, out.image_ids)
        return out


def run_shard(cfg: RunConfig, positions: list[int], index, run_id: str, token_sample: int = 0) -> dict:
    """One shard on this worker: the ordinary pipeline over `positions`, finished items skipped.

    Pure in (cfg, positions): rerunning it (a retry after a worker died) rewrites identical
    row files. token_sample > 0: also return a TokenReservoir of that many of the shard's
    encoder tokens (bounded, mergeable on the client). Returns what the client records.
    """
    check_shared_paths(cfg, index, positions, run_id)
    # the shard's own sample goes back to the client; the pipeline's (DIR/reservoir.npz,
    # read and rewritten by every run) is the client's to keep, not every shard's at once
    shard_cfg = replace(cfg, resume=True, figures=0, analysis=replace(cfg.analysis, dataset_sample=0))
    source = worker_state().source_for(shard_cfg)
    reservoir = None
    if token_sample > 0:
        reservoir = TokenReservoir(token_sample, seed=cfg.analysis.seed)
        source = SampledSource(source, reservoir)
    for attempt in range(TMP_RACE_RETRIES):
        try:
            result = run_sweep(shard_cfg, echo=log.info, show_progress=False, index=index, positions=positions,
                               source=source, record_run=False)
            break
        except FileNotFoundError as err:
            # ResultStore() clears leftover .tmp files when it opens --out; another worker's
            # shard opening it can remove a file this one is about to rename (or the other way
            # round). Nothing is lost: the shard simply runs again, skipping what it wrote.
            if not str(err.filename or "").endswith(".tmp") or attempt == TMP_RACE_RETRIES - 1:
                raise
    worker = distributed.get_worker()
    run = result.run
    return {
        "first_position": positions[0], "items": len(positions), "images_done": result.images_done,
        "seconds": result.seconds, "seconds_per_stage": run.get("seconds_per_stage", {}),
        "worker": worker.address, "host": socket.gethostname(),
        "run": {k: run[k] for k in ("device", "device_name", "backend", "source", "simulated", "loader", "versions") if k in run},
        "reservoir": reservoir,
    }


def fit_dataset_clustering(reservoir, cfg: RunConfig, num_classes: int, class_names: tuple[str, ...] | None) -> dict:
    """The sweep's dataset-level PCA + KMeans on the merged sample, on this worker's --device.

    Writes DIR/dataset_clustering.json/.parquet (shared --out) as a local run does.
    """
    device = parse_device(cfg.device)
    backend, _ = open_backend(cfg, device)
    return cluster_reservoir(reservoir, cfg, backend, device, num_classes, class_names, log.info)


def hold(value):
    """A task whose result is `value`: the scheduler keeps the spec, so a lost copy is recomputed."""
    return value


# ----------------------------------------------------------------------------- client side


@dataclass
class ClusterHandle:
    client: object  # distributed.Client
    kind: str  # "external" | "LocalCluster" | "LocalCUDACluster"
    address: str


@contextmanager
def open_cluster(cluster: ClusterConfig, device: str, echo: Callable[[str], None]) -> Iterator[ClusterHandle]:
    """A client on the asked-for cluster; a local one is shut down on exit."""
    if cluster.scheduler is not None:
        try:
            client = distributed.Client(cluster.scheduler, timeout=cluster.connect_timeout)
        except (OSError, TimeoutError) as err:
            raise ConfigError(f"--scheduler {cluster.scheduler}: cannot connect ({err}); start one with `dask scheduler` "
                              f"and workers with `dask worker {cluster.scheduler}`") from None
        try:
            try:
                client.wait_for_workers(1, timeout=cluster.connect_timeout)
            except TimeoutError:
                raise ConfigError(f"--scheduler {cluster.scheduler}: no worker joined within {cluster.connect_timeout:.0f} s; "
                                  f"start them with `dask worker {cluster.scheduler}` (or `dask cuda worker` on GPU nodes)") from None
            yield ClusterHandle(client, "external", cluster.scheduler)
        finally:
            client.close()
        return
    import dask

    # non-daemonic worker processes, so the DataLoader in each may start its own workers;
    # kept for the cluster's life, since a nanny reads it again when it restarts a worker
    with dask.config.set({"distributed.worker.daemon": False}):
        if device.startswith("cuda"):
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                raise ConfigError("--cluster local with --device cuda needs dask-cuda (one worker per GPU); "
                                  "install it with pip install 'sam3-datr[dask-cuda]', or use --device cpu") from None
            local = LocalCUDACluster(n_workers=cluster.workers, threads_per_worker=1, dashboard_address=":0")
            kind = "LocalCUDACluster"
        else:
            local = distributed.LocalCluster(n_workers=cluster.workers or 2, threads_per_worker=1, processes=True,
                                             dashboard_address=":0")
            kind = "LocalCluster"
        try:
            client = distributed.Client(local)
            try:
                echo(f"cluster: started a {kind} at {local.scheduler_address} (dashboard {client.dashboard_link})")
                yield ClusterHandle(client, kind, local.scheduler_address)
            finally:
                client.close()
        finally:
            local.close()



def run_distributed_sweep(
    cfg: RunConfig,
    cluster: ClusterConfig,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
    shard_task: Callable[..., dict] = run_shard,
) -> SweepResult:
    """Run (or resume) a sweep with its shards spread over a Dask cluster; returns a SweepResult.

    With cfg.analysis.dataset_sample > 0, the dataset-level clustering too: each shard keeps
    a bottom-k TokenReservoir of its items' encoder tokens, the client merges them into
    DIR/reservoir.npz's sample as shards finish (memory: two reservoirs), and one task fits
    the sweep's PCA + KMeans on a worker's --device. Bottom-k samples merge exactly, so
    this is the sample one process draws -- except that a shard retried after its worker
    died samples only the items the retry computed.
    shard_task: the function each shard runs, with run_shard's signature (tests wrap it).
    """
    cluster.validate()
    check_run_config(cfg)
    check_target(cfg)  # a bad option or a --resume with nothing to resume is refused before --out is touched
    with FolderLock(cfg.out, "--out"):  # the workers write under the client's lock
        return distributed_sweep(cfg, cluster, echo, show_progress, shard_task)


def distributed_sweep(cfg: RunConfig, cluster: ClusterConfig, echo: Callable[[str], None], show_progress: bool,
                      shard_task: Callable[..., dict]) -> SweepResult:
    started = time.perf_counter()
    with open_cluster(cluster, cfg.device, echo) as handle:
        workers = probe_workers(handle.client, cfg, echo)
        plan = plan_run(cfg, echo, common_choices(handle.client, cfg))  # the identity holds what the workers resolved
        sample = open_reservoir(cfg, bool(plan.finished), echo, forget=plan.recomputed) if cfg.analysis.dataset_sample else None
        shards = plan_shards(plan.todo, cfg.batch_size, len(workers), cluster.shard_size)
        run_id = uuid.uuid4().hex
        run = cluster_record(plan, handle, workers, shards, run_id, cluster.threads or worker_threads_default())
        reports: list[dict] = []
        ending = Ending(plan, run, started, lambda: stage_totals(reports), sample,
                        lambda merged: handle.client.submit(fit_dataset_clustering, merged, cfg, plan.num_classes,
                                                            plan.class_names, pure=False).result())

        def work() -> None:
            ending.write()  # "running" -- from here on, however the run ends, run.json says so
            move_stale_shards(plan, run)
            plan.store.write_errors([e for e in plan.index.bad if e[0] not in plan.finished], "index")
            echo(f"cluster: {len(workers)} workers at {handle.address}, {len(shards)} shards of up to "
                 f"{run['cluster']['shard_size']} items")
            handle.client.register_plugin(WorkerState(run["cluster"]["threads_per_worker"], cfg.device), name=PLUGIN_NAME)
            run_shards(handle.client, plan, shards, run_id, sample, shard_task, show_progress, ending, reports)
            record_shards(run, reports)
            if sample is not None:
                echo(f"dataset clustering: {len(sample)} of {sample.tokens_seen} tokens sampled; fitting on a worker "
                     f"({cfg.device})")

        run_to_the_end(ending, work)
    return SweepResult(out=cfg.out, images_done=ending.images_done, images_skipped_resume=plan.skipped_resume,
                       errors=ending.errors, seconds=run["seconds"], run=run)


def cluster_record(plan, handle: ClusterHandle, workers: dict[str, dict], shards: list[list[int]], run_id: str,
                   threads: int) -> dict:
    """run.json of a cluster run as it starts: the header, the data and the cluster it runs on."""
    return {
        **run_header(plan.cfg, plan.identity),
        "data": plan.index.describe(),
        "num_items": len(plan.item_ids),
        "cluster": {
            "run_id": run_id, "kind": handle.kind, "scheduler": handle.address, "workers": len(workers),
            "devices": [{"worker": address, **info} for address, info in sorted(workers.items())],
            "shards": len(shards), "shard_size": len(shards[0]) if shards else 0, "threads_per_worker": threads,
        },
    }


def common_choices(client, cfg: RunConfig) -> Choices:
    """The backend, eigensolver and decode path every worker resolved; workers that disagree are refused."""
    seen = client.run(resolve_on_worker, cfg)
    first_address, first = sorted(seen.items())[0]
    for address, choices in sorted(seen.items()):
        if choices.identity() != first.identity():
            raise ConfigError(f"workers resolve the run's choices differently ({first_address}: {first.identity()}, "
                              f"{address}: {choices.identity()}); give --backend, --eigh and --decode explicitly, or use "
                              "workers of one kind")
    return first


def worker_threads_default() -> int:
    """The client's torch CPU thread count: the workers' default (see ClusterConfig.threads)."""
    import torch

    return torch.get_num_threads()


def probe_workers(client, cfg: RunConfig, echo: Callable[[str], None]) -> dict[str, dict]:
    """What each worker is (host, device); a daemonic worker cannot start DataLoader workers."""
    workers = client.run(describe_worker, cfg.device)
    daemonic = [address for address, info in workers.items() if info["daemon"]]
    if daemonic and cfg.data.num_workers > 0:
        raise ConfigError(f"--num-workers {cfg.data.num_workers}: worker {daemonic[0]} is a daemonic process and cannot start "
                          "DataLoader workers; start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False, or use --num-workers 0")
    for address, info in workers.items():
        if cfg.device.startswith("cuda") and info["cuda_devices"] > 1:
            echo(f"note: worker {address} sees {info['cuda_devices']} GPUs and uses the first; "
                 "start GPU workers with `dask cuda worker` for one worker per GPU")
    return workers


def run_shards(client, plan, shards: list[list[int]], run_id: str, sample, shard_task: Callable[..., dict],
               show_progress: bool, ending: Ending, reports: list[dict]) -> None:
    """Submit every shard, merge each shard's token sample as it finishes; each shard's report joins `reports`
    as it comes (so a run that stops records what its finished shards did)."""
    cfg, started = plan.cfg, ending.started
    index_future = client.submit(hold, plan.index, pure=False)
    futures = [client.submit(shard_task, cfg, shard, index_future, run_id, cfg.analysis.dataset_sample, pure=False,
                             key=f"datr-shard-{shard[0]:06d}-{run_id}") for shard in shards]
    try:
        with progress_bar(len(plan.todo), show_progress) as bar:
            task = bar.add_task("sweep", total=len(plan.todo), rate="")
            for future in distributed.as_completed(futures):
                report = future.result()
                future.release()  # the shard's reservoir leaves the worker's memory
                shard_sample = report.pop("reservoir", None)
                if sample is not None and shard_sample is not None:
                    sample.merge(shard_sample)
                reports.append(report)
                ending.images_done += report["images_done"]
                bar.advance(task, report["items"])
                done = sum(r["items"] for r in reports)
                bar.update(task, rate=f"{done / max(time.perf_counter() - started, 1e-9):.2f} img/s")
    except BaseException:
        client.cancel(futures)
        raise


def stage_totals(reports: list[dict]) -> dict[str, float]:
    """Seconds per stage summed over the shards."""
    stages: dict[str, float] = {}
    for report in reports:
        for stage, seconds in report["seconds_per_stage"].items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    return stages


def record_shards(run: dict, reports: list[dict]) -> None:
    """The workers' device, backend and source (from the first shard) and every shard's report, into run.json."""
    first = min(reports, key=lambda r: r["first_position"])["run"] if reports else {}
    run.update({key: value for key, value in first.items() if key != "versions"})
    if first.get("versions") and first["versions"] != run["versions"]:
        run["worker_versions"] = first["versions"]
    run["cluster"]["shard_reports"] = sorted(
        ({k: r[k] for k in ("first_position", "items", "images_done", "worker", "host", "seconds")} for r in reports),
        key=lambda r: r["first_position"])
