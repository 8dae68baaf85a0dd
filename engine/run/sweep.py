"""The sweep: plan -> source (SAM3, simulated or a feature cache) -> batched analysis -> Parquet rows -> record.

One device, one batched analysis call per batch (no loop over images, prompts or
problems); the DataLoader's workers load ahead and a writer thread writes shards while
the next batch computes. Results and errors land as engine.run.store describes; run.json
as engine.run.record describes. The Dask sweep (engine.run.distributed) runs this same
function on each shard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.analysis.batch import BatchMaps, analyze_batch
from engine.core.config import RunConfig
from engine.core.devices import device_name, parse_device
from engine.core.errors import DataError, DatrError
from engine.core.timing import StageTimer
from engine.data.index import DatasetIndex
from engine.data.loader import make_loader
from engine.run.lock import OutLock
from engine.run.plan import RunPlan, open_backend, plan_run
from engine.run.progress import progress_bar
from engine.run.record import failure, finish_record, run_header
from engine.run.sample import RESERVOIR_FILE, cluster_reservoir, open_reservoir
from engine.run.store import check_rows, errored_ids
from engine.sources.base import SourceBatch
from engine.sources.cache import FeatureCacheWriter
from engine.sources.factory import build_source

MASK_PROBS_BUDGET = 2 << 30  # bytes of 288x288 fp16 mask probabilities kept for the figures of one batch


@dataclass
class FigureData:
    """What the per-image figures of the first `wanted` images need, handed over by the sweep (CPU tensors)."""

    wanted: int = 0
    maps: list[tuple[BatchMaps, int]] = field(default_factory=list)  # (maps, row in batch)
    ids: tuple[str, ...] = ()  # these image ids instead of the first `wanted` (--figure-ids)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # image_id -> (3, S, S) uint8
    mask_probs: dict[str, torch.Tensor] = field(default_factory=dict)  # image_id -> (P, Q, 288, 288) float16

    def still_wanted(self) -> int:
        return self.wanted - len(self.maps)

    def keep(self, maps: BatchMaps | None, batch: PreparedBatch) -> None:
        """Take the first images of this batch, up to the number still wanted."""
        if maps is None:
            return
        src = batch.source
        rows = range(min(self.still_wanted(), len(src.image_ids)))
        if self.ids:
            rows = [r for r, image_id in enumerate(src.image_ids) if image_id in self.ids]
        for row in rows:
            image_id = src.image_ids[row]
            self.maps.append((maps, row))
            if batch.images is not None:
                self.images[image_id] = batch.images[row].cpu()
            if src.mask_probs is not None:
                self.mask_probs[image_id] = src.mask_probs[row].cpu()


@dataclass
class SweepResult:
    out: Path
    images_done: int
    images_skipped_resume: int
    errors: int
    seconds: float
    run: dict
    figures: FigureData = field(default_factory=FigureData)


@dataclass
class PreparedBatch:
    """A batch ready for the analysis: the source's outputs and what the loader knew."""

    source: SourceBatch
    gt_mask: torch.Tensor | None
    gt_tokens: torch.Tensor | None
    positions: list[int]  # item positions, for shard names
    images: torch.Tensor | None  # (B, 3, S, S) uint8 on the device; None from a cache


def full_masks_fit(images: int, prompts: int, queries: int = 200, side: int = 288) -> bool:
    """Whether a batch's full-resolution mask probabilities (fp16) fit the figure budget."""
    return images * prompts * queries * side * side * 2 <= MASK_PROBS_BUDGET


def run_sweep(
    cfg: RunConfig,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
    index: DatasetIndex | None = None,
    keep_figures: int | tuple[str, ...] = 0,
    positions: list[int] | None = None,
    source=None,
    record_run: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep as configured; returns counts and, for figures, the first maps.

    positions: only these item positions (a shard of a distributed run; default all).
    source: an already-built FeatureSource (a worker keeps its model between shards).
    record_run: this process owns --out: it takes the lock, writes run.json, merges
    errors.parquet and checks that every item has its rows exactly once (False for a
    Dask shard: the client does all that, under its lock).
    """
    if not record_run:
        return sweep(cfg, echo, show_progress, index, keep_figures, positions, source, record_run)
    cfg.validate()  # a bad option is refused before --out is created
    with OutLock(cfg.out, echo):
        return sweep(cfg, echo, show_progress, index, keep_figures, positions, source, record_run)


def sweep(cfg: RunConfig, echo: Callable[[str], None], show_progress: bool, index: DatasetIndex | None, keep_figures: int,
          positions: list[int] | None, source, record_run: bool) -> SweepResult:
    started = time.perf_counter()
    plan = plan_run(cfg, echo, index=index, positions=positions, owner=record_run)
    device = parse_device(cfg.device)
    backend, backend_reason = open_backend(cfg, device)
    echo(f"backend: {backend.name} ({backend_reason})")
    timer = StageTimer(device)
    if plan.cache is None and source is None:
        with timer.host("model_load"):
            source = build_source(cfg, device)
    run = sweep_record(plan, device, backend, backend_reason, plan.cache if plan.cache is not None else source)
    if record_run:
        plan.store.write_run_json(run)
    result = SweepResult(out=cfg.out, images_done=0, images_skipped_resume=plan.skipped_resume, errors=0, seconds=0.0,
                         run=run, figures=FigureData(len(keep_figures), ids=keep_figures) if isinstance(keep_figures, tuple)
                         else FigureData(keep_figures))
    bar = progress_bar(len(plan.todo), show_progress)
    task = bar.add_task("sweep", total=len(plan.todo), rate="")

    def skipped(errors: list[tuple[str, str, str]], tag: str) -> None:
        plan.store.write_errors(errors, tag)
        for image_id, _path, message in errors:
            echo(f"skipped {image_id}: {message}")
        bar.advance(task, len(errors))

    def done(images: int) -> None:
        result.images_done += images
        bar.advance(task, images)
        bar.update(task, rate=f"{result.images_done / max(time.perf_counter() - started, 1e-9):.2f} img/s")

    status, error = "complete", None
    reservoir = open_reservoir(cfg, bool(plan.finished), echo) if cfg.analysis.dataset_sample else None
    try:
        batches = source_batches(plan, source, device, timer, result.figures, run, skipped, echo, shard=positions is not None)
        with bar:
            analyse_batches(batches, plan, backend, device, timer, result.figures, reservoir, done)
        if record_run:
            result.errors = plan.store.merge_errors(plan.known_ids)
            check_rows(cfg.out, plan.item_ids, plan.rows_per_item, errored_ids(cfg.out))
        if reservoir is not None and record_run:
            with timer.stage("dataset_clustering"):
                run["dataset_clustering"] = cluster_reservoir(reservoir, cfg, backend, device, plan.num_classes,
                                                              plan.class_names, echo)
    except BaseException as err:
        status, error = failure(err)
        raise
    finally:
        close_sweep(plan, run, result, timer, reservoir, record_run, status, error, device, started)
    return result


def close_sweep(plan: RunPlan, run: dict, result: SweepResult, timer: StageTimer, reservoir, record_run: bool, status: str,
                error: str | None, device: torch.device, started: float) -> None:
    """Save what the run computed and record how it ended (also when it failed or was interrupted).

    A run that failed records its status first: on a full disk the few bytes of run.json
    matter more than errors.parquet, which a resume rebuilds anyway.
    """
    cfg = plan.cfg

    def record() -> None:
        result.seconds = time.perf_counter() - started
        finish_record(run, status=status, images_done=result.images_done, images_skipped_resume=result.images_skipped_resume,
                      errors=result.errors, seconds=result.seconds, seconds_per_stage=timer.collect(), error=error)
        run["stage_timing"] = "CUDA events" if device.type == "cuda" else "wall clock"
        if record_run:
            plan.store.write_run_json(run)

    def save() -> None:
        with timer.host("write"):
            if reservoir is not None:
                reservoir.save(cfg.out / RESERVOIR_FILE)  # a resumed run continues the same sample
            if record_run and status != "complete":  # a complete run merged them before its row check
                result.errors = plan.store.merge_errors(plan.known_ids)

    if status == "complete":
        save()
        record()
        return
    for step in (record, save, record):
        try:
            step()
        except (OSError, DatrError):
            pass  # the error that ended the run is the one to report; what could be saved is saved


def sweep_record(plan: RunPlan, device: torch.device, backend, backend_reason: str, source) -> dict:
    """run.json of a local sweep as it starts: the header, then device, backend, source and data."""
    source_info = source.describe()
    return {
        **run_header(plan.cfg, plan.identity),
        "device_name": device_name(device),
        "backend": {"requested": plan.cfg.analysis.backend, "used": backend.name, "reason": backend_reason,
                    "detail": getattr(backend, "detail", "")},
        "source": source_info,
        "simulated": bool(source_info.get("simulated", False)),
        "data": plan.index.describe() if plan.index is not None else {},
        "num_items": len(plan.item_ids),
    }


def source_batches(plan: RunPlan, source, device: torch.device, timer: StageTimer, figures: FigureData, run: dict,
                   skipped: Callable, echo: Callable[[str], None], shard: bool) -> Iterator[PreparedBatch]:
    """The plan's unfinished items as PreparedBatches: read from the feature cache, or loaded and run through the model."""
    cfg = plan.cfg
    if plan.cache is not None:
        return cached_batches(plan, device, timer, skipped)
    loader = make_loader(plan.index, cfg.data_config(), cfg.batch_size, device, indices=plan.todo)
    run["loader"] = loader.describe()
    if not shard:  # a shard leaves the index errors to the coordinator
        plan.store.write_errors([e for e in plan.index.bad if e[0] not in plan.finished], "index")
    cache_writer = None
    if cfg.save_features is not None:
        cache_writer = FeatureCacheWriter(cfg.save_features, cfg.prompts, cfg.class_ids, cfg.analysis.taus, run["source"],
                                          cfg.cache_dtype)
    return model_batches(loader, source, cfg, device, timer, cache_writer, skipped, figures, echo)


def model_batches(loader, source, cfg: RunConfig, device: torch.device, timer: StageTimer, cache_writer,
                  skipped: Callable, figures: FigureData, echo: Callable[[str], None]) -> Iterator[PreparedBatch]:
    """Loaded batches through the model (SAM3 or simulated); bad items go to `skipped`."""
    for batch in timed(loader, timer):
        if batch.errors:
            skipped(batch.errors, f"{batch.indices[0] if batch.indices else 0:06d}")
        if not batch.image_ids:
            continue
        images = batch.images.to(device, non_blocking=True)
        wants_figures = figures.still_wanted() > 0
        keep_full = wants_figures and full_masks_fit(len(batch.image_ids), len(cfg.prompts))
        if wants_figures and not keep_full:
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


def cached_batches(plan: RunPlan, device: torch.device, timer: StageTimer, skipped: Callable) -> Iterator[PreparedBatch]:
    """Batches read back from a feature cache (no model); files that fail their checks go to `skipped`."""
    cfg = plan.cfg
    for batch in timed(plan.cache.batches(plan.todo, cfg.batch_size, cfg.analysis.taus, device), timer):
        if batch.errors:
            skipped(batch.errors, f"cache-{batch.errors[0][0]}")
        if batch.source is not None:
            yield PreparedBatch(batch.source, batch.gt_mask, batch.gt_tokens, batch.positions, None)


def timed(batches, timer: StageTimer) -> Iterator:
    """The items of `batches`, the time spent waiting for each one counted as the "load" stage."""
    batches = iter(batches)
    while True:
        with timer.host("load"):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def analyse_batches(batches: Iterator[PreparedBatch], plan: RunPlan, backend, device: torch.device, timer: StageTimer,
                    figures: FigureData, reservoir, done: Callable[[int], None]) -> None:
    """Analyse every batch; a writer thread writes each batch's row shard while the next one computes."""
    cfg = plan.cfg
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datr-writer")
    pending = []
    try:
        for prep in batches:
            src = prep.source
            try:
                with timer.stage("analysis"):
                    out = analyze_batch(src, cfg.analysis, backend, cfg.prompts, cfg.class_ids, plan.num_classes,
                                        gt_tokens=None if prep.gt_tokens is None else prep.gt_tokens.to(device),
                                        gt_mask=None if prep.gt_mask is None else prep.gt_mask.to(device),
                                        keep_maps=figures.still_wanted() > 0)
            except torch.OutOfMemoryError:
                raise DatrError(f"out of memory on {device} in the analysis at --batch-size {cfg.batch_size}; "
                                "lower --batch-size") from None
            except ValueError as err:  # NaN/inf features and the like, from the kernels
                raise DataError(f"batch starting at {src.image_ids[0]}: {err}") from None
            figures.keep(out.maps, prep)
            pending.append(writer.submit(plan.store.write_rows, out.columns, prep.positions[0]))
            if reservoir is not None:  # after the rows are on their way: a resume will not re-offer these
                reservoir.add(src.features.flatten(2).transpose(1, 2),
                              None if prep.gt_tokens is None else prep.gt_tokens.reshape(len(src.image_ids), -1),
                              src.image_ids)
            for finished in [f for f in pending if f.done()]:
                finished.result()  # surface write errors early
                pending.remove(finished)
            done(len(src.image_ids))
        for f in pending:
            f.result()
    finally:
        with timer.host("write"):
            writer.shutdown(wait=True)
