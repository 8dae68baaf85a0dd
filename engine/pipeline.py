"""The sweep: loader -> source (SAM3 or simulated) -> batched analysis -> Parquet rows.

One device, one batched analysis call per batch (no loop over images, prompts or
problems); the DataLoader's workers load ahead and a writer thread writes shards
while the next batch computes. Results and errors land as ResultStore describes.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.analysis import BatchMaps, analyze_batch
from engine.config import RunConfig
from engine.devices import parse_device
from engine.errors import BackendError, DataError, DatrError
from engine.source import SourceBatch
from engine.store import ResultStore
from engine.timing import StageTimer
from kernels.backends import BackendUnavailable, resolve_backend


@dataclass
class SweepResult:
    out: Path
    images_done: int
    images_skipped_resume: int
    errors: int
    seconds: float
    run: dict
    maps: list[tuple[BatchMaps, int]] = field(default_factory=list)  # (maps, row in batch) for figures
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # image_id -> (3, S, S) uint8, figures only
    mask_probs: dict[str, torch.Tensor] = field(default_factory=dict)  # image_id -> (P, Q, 288, 288), figures only


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import numpy
    import pyarrow
    import sklearn

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "sklearn": sklearn.__version__, "pyarrow": pyarrow.__version__}
    try:
        from importlib.metadata import version

        out["sam3"] = version("sam3")
    except Exception:  # noqa: BLE001 -- not installed is fine here
        out["sam3"] = None
    return out


def run_header(cfg: RunConfig) -> dict:
    """The first fields of every run.json: status, start time, resolved config, versions, commit."""
    return {
        "status": "running",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "config": cfg.to_json(),
        "versions": versions(),
        "git_commit": git_commit(),
        "device": cfg.device,
    }


def build_source(cfg: RunConfig, device: torch.device):
    if cfg.model == "simulated":
        from engine.simulated import SimulatedConfig, SimulatedSource

        return SimulatedSource(cfg.prompts, cfg.class_ids, device, SimulatedConfig(seed=cfg.simulated_seed))
    from engine.sam3_adapter import Sam3Config, Sam3Source

    return Sam3Source.from_config(Sam3Config(checkpoint=cfg.checkpoint, bpe_path=cfg.bpe_path, device=str(device),
                                             prompts=cfg.prompts, grid_chunk=cfg.grid_chunk))


def progress_bar(total: int, enabled: bool):
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


RESERVOIR_FILE = "reservoir.npz"
MASK_PROBS_BUDGET = 2 << 30  # bytes of 288x288 fp16 mask probabilities kept for the figures of one batch


def full_masks_fit(images: int, prompts: int, queries: int = 200, side: int = 288) -> bool:
    """Whether a batch's full-resolution mask probabilities (fp16) fit the figure budget."""
    return images * prompts * queries * side * side * 2 <= MASK_PROBS_BUDGET


def open_reservoir(cfg: RunConfig, store: ResultStore, resuming_with_rows: bool, echo):
    """The dataset-level token sample: the saved one when resuming, else a new one."""
    from engine.dataset_clustering import TokenReservoir

    path = cfg.out / RESERVOIR_FILE
    if cfg.resume and path.is_file():
        reservoir = TokenReservoir.load(path)
        if reservoir.size != cfg.analysis.dataset_sample:
            raise DataError(f"{path}: holds a sample of {reservoir.size} tokens, not --dataset-sample {cfg.analysis.dataset_sample}; use the same value or a new --out")
        return reservoir
    if resuming_with_rows:
        echo(f"warning: {path} is missing, so the dataset-level sample covers only the images analysed from now on")
    return TokenReservoir(cfg.analysis.dataset_sample, seed=cfg.analysis.seed, channels=256)


def cluster_reservoir(reservoir, cfg: RunConfig, backend, device: torch.device, num_classes: int, echo) -> dict:
    """Dataset-level PCA + KMeans for every (d, k) of the grid; written next to the rows."""
    from engine.dataset_clustering import cluster_dataset, write_dataset_clustering

    if len(reservoir) < max(cfg.analysis.ks):
        echo(f"dataset-level clustering skipped: only {len(reservoir)} tokens sampled")
        return {"skipped": f"only {len(reservoir)} tokens sampled"}
    class_names = None
    if cfg.from_cache is None:
        from engine.data import UDD5_CLASSES

        class_names = UDD5_CLASSES[:num_classes]
    results = [
        cluster_dataset(reservoir, k, d, backend, cfg.analysis.seed, n_init=cfg.analysis.n_init, max_iter=cfg.analysis.max_iter,
                        tol=cfg.analysis.tol, num_classes=num_classes, class_names=class_names, device=device)
        for d in cfg.analysis.dims for k in cfg.analysis.ks
    ]
    write_dataset_clustering(cfg.out, results)
    for res in results:
        purity = "-" if res["purity"] is None else f"{res['purity']:.3f}"
        echo(f"dataset-level clustering (d={res['d']}, k={res['k']}): {res['tokens']} tokens from {res['images']} images, purity {purity}")
    return {"file": "dataset_clustering.json", "tokens": len(reservoir), "backend": backend.name}


@dataclass
class PreparedBatch:
    """A batch ready for the analysis: the source's outputs and what the loader knew."""

    source: SourceBatch
    gt_mask: torch.Tensor | None
    gt_tokens: torch.Tensor | None
    positions: list[int]  # item positions, for shard names
    images: torch.Tensor | None  # (B, 3, S, S) uint8 on the device; None from a cache


def model_batches(loader, source, cfg: RunConfig, device: torch.device, timer: StageTimer, cache_writer,
                  skipped: Callable, wants_figures: Callable[[], bool], echo) -> Iterator[PreparedBatch]:
    """Loaded batches through the model (SAM3 or simulated); bad items go to `skipped`."""
    batches = iter(loader)
    while True:
        with timer.host("load"):
            batch = next(batches, None)
        if batch is None:
            return
        if batch.errors:
            skipped(batch.errors, f"{batch.indices[0] if batch.indices else 0:06d}")
        if not batch.image_ids:
            continue
        images = batch.images.to(device, non_blocking=True)
        keep_full = wants_figures() and full_masks_fit(len(batch.image_ids), len(cfg.prompts))
        if wants_figures() and not keep_full:
            echo(f"figures: full-resolution masks of a {len(batch.image_ids)}-image batch would need more than "
                 f"{MASK_PROBS_BUDGET >> 30} GiB; the per-mask figures use the 72x72 pooled masks")
        try:
            with timer.stage("model"):
                src = source.run_batch(images, batch.image_ids, cfg.analysis.taus, gt_mask=batch.gt_mask,
                                       gt_tokens=batch.gt_tokens, keep_mask_probs=keep_full)
        except torch.OutOfMemoryError:
            raise DatrError(f"out of memory on {device} at --batch-size {cfg.batch_size}; lower --batch-size") from None
        if cache_writer is not None:
            with timer.host("cache_write"):
                cache_writer.write(src, batch.gt_mask, batch.gt_tokens)
        yield PreparedBatch(src, batch.gt_mask, batch.gt_tokens, batch.indices, images)


def cached_batches(reader, todo: list[int], cfg: RunConfig, device: torch.device, timer: StageTimer) -> Iterator[PreparedBatch]:
    """Batches read back from a feature cache (no model)."""
    batches = reader.batches(todo, cfg.batch_size, cfg.analysis.taus, device)
    while True:
        with timer.host("load"):
            batch = next(batches, None)
        if batch is None:
            return
        yield PreparedBatch(batch.source, batch.gt_mask, batch.gt_tokens, batch.positions, None)


def keep_figure_data(result: SweepResult, maps: BatchMaps | None, prep: PreparedBatch, wanted: int) -> int:
    """Hand the first `wanted` images of this batch to the figures; returns how many were kept."""
    if maps is None or wanted <= 0:
        return 0
    src = prep.source
    kept = min(wanted, len(src.image_ids))
    for row in range(kept):
        image_id = src.image_ids[row]
        result.maps.append((maps, row))
        if prep.images is not None:
            result.images[image_id] = prep.images[row].cpu()
        if src.mask_probs is not None:
            result.mask_probs[image_id] = src.mask_probs[row].cpu()
    return kept


def run_sweep(
    cfg: RunConfig,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
    index=None,
    keep_figures: int = 0,
    positions: list[int] | None = None,
    source=None,
    record_run: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep as configured; returns counts and, for figures, the first maps.

    positions: only these item positions (a shard of a distributed run; default all).
    source: an already-built FeatureSource (a worker keeps its model between shards).
    record_run: write run.json and merge errors.parquet (False for a shard: the
    coordinator does that once).
    """
    cfg.validate()
    started = time.perf_counter()
    device = parse_device(cfg.device)
    store = ResultStore(cfg.out, cfg.resume, clean_stale=record_run)
    try:
        backend, backend_reason = resolve_backend(cfg.analysis.backend, device, eigh=cfg.analysis.eigh)
    except BackendUnavailable as err:
        raise BackendError(f"--backend {cfg.analysis.backend}: {err}") from None
    echo(f"backend: {backend.name} ({backend_reason})")
    timer = StageTimer(device)

    cache_reader = None
    data_info: dict = {}
    if cfg.from_cache is not None:
        from engine.cache import FeatureCacheReader

        cache_reader = FeatureCacheReader(cfg.from_cache)
        if cache_reader.prompts != tuple(cfg.prompts):
            raise DataError(f"--from-cache {cfg.from_cache}: cached prompts {list(cache_reader.prompts)} differ from --prompts {list(cfg.prompts)}")
        all_ids = cache_reader.image_ids
        source = None
        source_info = {"model": "cache", **cache_reader.describe()}
        source_info["simulated"] = bool((source_info.get("source") or {}).get("simulated", False))
        num_classes = max(cache_reader.class_ids) + 1
    else:
        from engine.data import DataConfig, index_dataset

        data_cfg = DataConfig(root=cfg.dataset, split=cfg.split, mode=cfg.mode, tile_overlap=cfg.tile_overlap,
                              dataset=cfg.dataset_kind, num_workers=cfg.num_workers, decode=cfg.decode, limit=cfg.limit)
        if index is None:
            index = index_dataset(data_cfg)
        data_info = index.describe()
        echo(f"data: {len(index.items)} items from {index.num_images} images ({index.dataset}: {index.dataset_reason}), mode {index.mode}")
        if not index.has_gt and cfg.model == "simulated":
            raise DataError(f"{cfg.dataset}: the simulated model needs ground truth (gt/ PNGs); use --model sam3 with --checkpoint, or a dataset with gt/")
        all_ids = [it.image_id for it in index.items]
        num_classes = len(index.classes)
        if source is None:
            with timer.host("model_load"):
                source = build_source(cfg, device)
        source_info = source.describe()
    finished = store.finished_ids() if cfg.resume else set()
    wanted = range(len(all_ids)) if positions is None else positions
    todo = [i for i in wanted if all_ids[i] not in finished]
    if cfg.resume:
        echo(f"resume: {len(all_ids) - len(todo)} items already done, {len(todo)} to go")
    if not all_ids:
        raise DataError(f"{cfg.dataset}: no images to analyse")

    run = {
        **run_header(cfg),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "backend": {"requested": cfg.analysis.backend, "used": backend.name, "reason": backend_reason,
                    "detail": getattr(backend, "detail", "")},
        "source": source_info,
        "simulated": bool(source_info.get("simulated", False)),
        "data": data_info,
        "num_items": len(all_ids),
    }
    if record_run:
        store.write_run_json(run)

    cache_writer = None
    if cfg.save_features is not None:
        from engine.cache import FeatureCacheWriter

        cache_writer = FeatureCacheWriter(cfg.save_features, cfg.prompts, cfg.class_ids, cfg.analysis.taus, source_info)

    result = SweepResult(out=cfg.out, images_done=0, images_skipped_resume=len(all_ids) - len(todo), errors=0, seconds=0.0, run=run)
    figures_left = keep_figures
    bar = progress_bar(len(todo), show_progress)
    task = bar.add_task("sweep", total=len(todo), rate="")

    def skipped(errors: list[tuple[str, str, str]], tag: str) -> None:
        store.write_errors(errors, tag)
        for image_id, _path, message in errors:
            echo(f"skipped {image_id}: {message}")
        bar.advance(task, len(errors))

    if cache_reader is not None:
        batches = cached_batches(cache_reader, todo, cfg, device, timer)
    else:
        from engine.data import make_loader

        loader = make_loader(index, data_cfg, cfg.batch_size, device, indices=todo)
        run["loader"] = loader.describe()
        if positions is None:  # a shard leaves the index errors to the coordinator
            store.write_errors([e for e in index.bad if e[0] not in finished], "index")
        batches = model_batches(loader, source, cfg, device, timer, cache_writer, skipped, lambda: figures_left > 0, echo)

    reservoir = open_reservoir(cfg, store, bool(finished), echo) if cfg.analysis.dataset_sample else None

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datr-writer")
    pending = []
    try:
        with bar:
            for prep in batches:
                src = prep.source
                try:
                    with timer.stage("analysis"):
                        out = analyze_batch(src, cfg.analysis, backend, cfg.prompts, cfg.class_ids, num_classes,
                                            gt_tokens=None if prep.gt_tokens is None else prep.gt_tokens.to(device),
                                            gt_mask=None if prep.gt_mask is None else prep.gt_mask.to(device),
                                            keep_maps=figures_left > 0)
                except torch.OutOfMemoryError:
                    raise DatrError(f"out of memory on {device} in the analysis at --batch-size {cfg.batch_size}; lower --batch-size") from None
                except ValueError as err:  # NaN/inf features and the like, from the kernels
                    raise DataError(f"batch starting at {src.image_ids[0]}: {err}") from None
                figures_left -= keep_figure_data(result, out.maps, prep, figures_left)
                pending.append(writer.submit(store.write_rows, out.columns, prep.positions[0]))
                if reservoir is not None:  # after the rows are on their way: a resume will not re-offer these
                    reservoir.add(src.features.flatten(2).transpose(1, 2),
                                  None if prep.gt_tokens is None else prep.gt_tokens.reshape(len(src.image_ids), -1), src.image_ids)
                for done in [f for f in pending if f.done()]:
                    done.result()  # surface write errors early
                    pending.remove(done)
                result.images_done += len(src.image_ids)
                bar.advance(task, len(src.image_ids))
                bar.update(task, rate=f"{result.images_done / max(time.perf_counter() - started, 1e-9):.2f} img/s")
        for f in pending:
            f.result()
        if reservoir is not None and record_run:
            with timer.stage("dataset_clustering"):
                run["dataset_clustering"] = cluster_reservoir(reservoir, cfg, backend, device, num_classes, echo)
    finally:
        with timer.host("write"):
            writer.shutdown(wait=True)
            if reservoir is not None:
                reservoir.save(cfg.out / RESERVOIR_FILE)  # a resumed run continues the same sample
            if record_run:
                result.errors = store.merge_errors()
        result.seconds = time.perf_counter() - started
        run.update({
            "status": "complete" if result.images_done + result.errors >= len(todo) else "interrupted",
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
            "images_done_this_run": result.images_done,
            "images_skipped_resume": result.images_skipped_resume,
            "errors": result.errors,
            "seconds": result.seconds,
            "seconds_per_stage": timer.collect(),
            "stage_timing": "CUDA events" if device.type == "cuda" else "wall clock",
        })
        if record_run:
            store.write_run_json(run)
    return result
