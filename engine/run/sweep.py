"""The sweep: plan -> source (SAM3, simulated or a feature cache) -> batched analysis -> Parquet rows -> record.

One device, one batched analysis call per batch (no loop over images, prompts or
problems); the DataLoader's workers load ahead and a writer thread writes shards while
the next batch computes. Results and errors land as engine.run.store describes; run.json
as engine.run.record describes, written first as "running" and last through
engine.run.finish (however the run ends). The Dask sweep (engine.run.distributed) runs
`run_sweep(record_run=False)` on each shard and finishes through the same path.
With `--resume --figures N`, finished images whose figures are missing are analysed
again for their maps only (`figure_pass`; their rows are not written again).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from engine.analysis.batch import BatchMaps, analyze_batch
from engine.core.config import RunConfig
from engine.core.devices import device_name, parse_device
from engine.core.errors import ConfigError, DataError, DatrError
from engine.core.timing import StageTimer
from engine.data.index import DatasetIndex
from engine.data.loader import make_loader
from engine.run.finish import Ending, run_to_the_end
from engine.run.inputs import fingerprint
from engine.run.lock import FolderLock
from engine.run.plan import RunPlan, check_target, plan_run, resolve_choices
from engine.run.progress import progress_bar
from engine.run.record import run_header
from engine.run.sample import cluster_reservoir, open_reservoir
from engine.sources.base import SourceBatch
from engine.sources.cache import FeatureCacheWriter
from engine.sources.factory import build_source

MASK_PROBS_BUDGET = 2 << 30  # bytes of 288x288 fp16 mask probabilities kept for the figures of one batch


@dataclass
class FigureData:
    """What the per-image figures of the images `ids` need, handed over by the sweep (CPU tensors).

    redo: positions of finished items whose figures are missing (`--resume --figures N`):
    analysed again for their maps only (their rows are written already).
    """

    ids: tuple[str, ...] = ()
    maps: list[tuple[BatchMaps, int]] = field(default_factory=list)  # (maps, row in batch)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # image_id -> (3, S, S) uint8
    mask_probs: dict[str, torch.Tensor] = field(default_factory=dict)  # image_id -> (P, Q, 288, 288) float16
    redo: list[int] = field(default_factory=list)
    done_before: tuple[str, ...] = ()  # asked for, and drawn completely by an earlier run

    def still_wanted(self) -> int:
        return len(self.ids) - len(self.maps)

    def wanted_in(self, image_ids: list[str]) -> bool:
        """Whether a batch of these images holds one whose maps are still wanted."""
        kept = {maps.image_ids[row] for maps, row in self.maps}
        return any(i in self.ids and i not in kept for i in image_ids)

    def keep(self, maps: BatchMaps | None, batch: PreparedBatch) -> None:
        """Take the wanted images of this batch (each once)."""
        if maps is None:
            return
        src = batch.source
        kept = {m.image_ids[r] for m, r in self.maps}
        for row, image_id in enumerate(src.image_ids):
            if image_id not in self.ids or image_id in kept:
                continue
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
    figures_drawn: Callable[[str], bool] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep as configured; returns counts and, for figures, the maps of the wanted images.

    keep_figures: the first N items, or these image ids, get their maps handed over for figures.
    figures_drawn: whether an image's figures are complete already; with --resume, finished
    items among the wanted whose figures are not are analysed again for their maps.
    positions: only these item positions (a shard of a distributed run; default all).
    source: an already-built FeatureSource (a worker keeps its model between shards).
    record_run: this process owns --out: it takes the lock (and the --save-features
    folder's), writes run.json, merges errors.parquet and checks that every item has its
    rows exactly once (False for a Dask shard: the client does all that, under its lock).
    """
    if not record_run:
        return shard_sweep(cfg, echo, index, positions, source)
    check_target(cfg)  # a bad option or a --resume with nothing to resume is refused before --out is touched
    with FolderLock(cfg.out, "--out"), cache_lock(cfg):
        return local_sweep(cfg, echo, show_progress, index, keep_figures, source, figures_drawn)


def cache_lock(cfg: RunConfig):
    """The --save-features folder's lock (one writer per feature cache), or nothing."""
    if cfg.save_features is None:
        return contextlib.nullcontext()
    if Path(cfg.save_features).resolve() == Path(cfg.out).resolve():
        raise ConfigError(f"--save-features {cfg.save_features}: the same folder as --out; give the cache its own folder")
    return FolderLock(cfg.save_features, "--save-features")


def shard_sweep(cfg: RunConfig, echo: Callable[[str], None], index: DatasetIndex | None, positions: list[int] | None,
                source) -> SweepResult:
    """One shard of a Dask run: rows of `positions` into --out (the client holds the lock and records the run)."""
    started = time.perf_counter()
    device = parse_device(cfg.device)
    backend, choices = resolve_choices(cfg, device)
    plan = plan_run(cfg, echo, choices, index=index, positions=positions, owner=False)
    timer = StageTimer(device)
    source = source if source is not None else build_source(cfg, device)
    run = sweep_record(plan, device, source)
    result = SweepResult(out=cfg.out, images_done=0, images_skipped_resume=plan.skipped_resume, errors=0, seconds=0.0, run=run)
    batches = source_batches(plan, source, device, timer, FigureData(), run, plan.todo,
                             lambda errors, tag: plan.store.write_errors(errors, tag), echo, shard=True)

    def done(images: int) -> None:
        result.images_done += images

    analyse_batches(batches, plan, backend, device, timer, FigureData(), None, done)
    result.seconds = time.perf_counter() - started
    run["seconds_per_stage"] = timer.collect()
    return result


def local_sweep(cfg: RunConfig, echo: Callable[[str], None], show_progress: bool, index: DatasetIndex | None,
                keep_figures: int | tuple[str, ...], source, figures_drawn) -> SweepResult:
    started = time.perf_counter()
    device = parse_device(cfg.device)
    backend, choices = resolve_choices(cfg, device)
    plan = plan_run(cfg, echo, choices, index=index)
    timer = StageTimer(device)
    run = sweep_record(plan, device, plan.cache)
    ending = Ending(plan, run, started, timer.collect, None, lambda sample: fit_sample(sample, plan, backend, device, timer, echo))
    result = SweepResult(out=cfg.out, images_done=0, images_skipped_resume=plan.skipped_resume, errors=0, seconds=0.0, run=run)

    def work() -> None:
        ending.write()  # "running" -- from here on, however the run ends, run.json says so
        echo(f"backend: {backend.name} ({choices.backend_reason})")
        result.figures = figure_request(plan, keep_figures, figures_drawn, echo)
        if cfg.analysis.dataset_sample:
            ending.reservoir = open_reservoir(cfg, bool(plan.finished), echo, forget=plan.recomputed)
        move_stale_shards(plan, run)
        nonlocal source
        if plan.cache is None and source is None:
            with timer.host("model_load"):
                source = build_source(cfg, device)
            run.update(sweep_record(plan, device, source))
            ending.write()
        analyse_all(plan, source, backend, device, timer, result.figures, ending.reservoir, run, ending, echo, show_progress)

    try:
        run_to_the_end(ending, work)
    finally:
        result.images_done, result.errors = ending.images_done, ending.errors
        result.seconds = time.perf_counter() - started
    return result


def move_stale_shards(plan: RunPlan, run: dict) -> None:
    """The shards of changed items leave rows/ (after run.json says "running"); run.json names the items."""
    if plan.recomputed:
        plan.superseded = plan.store.supersede(plan.stale_shards, set(plan.recomputed))
        run["recomputed"] = {"items": plan.recomputed, "superseded_shards": str(plan.superseded)}


def analyse_all(plan: RunPlan, source, backend, device: torch.device, timer: StageTimer, figures: FigureData, reservoir,
                run: dict, ending: Ending, echo: Callable[[str], None], show_progress: bool) -> None:
    """The figure-only pass (finished items whose figures are missing), then every unfinished item with a progress bar."""
    if figures.redo:
        figure_pass(plan, source, device, backend, timer, figures, run, echo)
    bar = progress_bar(len(plan.todo), show_progress)
    task = bar.add_task("sweep", total=len(plan.todo), rate="")

    def skipped(errors: list[tuple[str, str, str]], tag: str) -> None:
        plan.store.write_errors(errors, tag)
        for image_id, _path, message in errors:
            echo(f"skipped {image_id}: {message}")
        bar.advance(task, len(errors))

    def done(images: int) -> None:
        ending.images_done += images
        bar.advance(task, images)
        bar.update(task, rate=f"{ending.images_done / max(time.perf_counter() - ending.started, 1e-9):.2f} img/s")

    batches = source_batches(plan, source, device, timer, figures, run, plan.todo, skipped, echo, shard=False)
    with bar:
        analyse_batches(batches, plan, backend, device, timer, figures, reservoir, done)


def figure_request(plan: RunPlan, keep_figures: int | tuple[str, ...], drawn, echo: Callable[[str], None]) -> FigureData:
    """Which images get figures: the first N items or the named ones; with --resume, the finished ones not yet drawn redone."""
    ids = keep_figures if isinstance(keep_figures, tuple) else tuple(plan.item_ids[:keep_figures])
    figures = FigureData(ids=ids)
    finished = [i for i in ids if i in plan.finished]
    if not finished or drawn is None:
        return figures
    position = {image_id: p for p, image_id in enumerate(plan.item_ids)}
    missing = [i for i in finished if not drawn(i)]
    figures.ids = tuple(i for i in ids if i not in finished or i in missing)
    figures.done_before = tuple(i for i in finished if i not in missing)
    figures.redo = sorted(position[i] for i in missing)
    echo(f"figures: {len(finished) - len(missing)} of the {len(ids)} image(s) asked for are drawn already; "
         f"{len(missing)} finished image(s) analysed again for their figures")
    return figures


def fit_sample(sample, plan: RunPlan, backend, device: torch.device, timer: StageTimer, echo: Callable[[str], None]) -> dict:
    """The dataset-level clustering of a local run, on its own device."""
    with timer.stage("dataset_clustering"):
        return cluster_reservoir(sample, plan.cfg, backend, device, plan.num_classes, plan.class_names, echo)


def sweep_record(plan: RunPlan, device: torch.device, source) -> dict:
    """run.json of a local sweep: the header, then device, backend, source and data (source: None until it is built)."""
    source_info = source.describe() if source is not None else {"model": plan.cfg.model, "note": "not loaded yet"}
    choices = plan.choices
    return {
        **run_header(plan.cfg, plan.identity),
        "device_name": device_name(device),
        "backend": {"requested": plan.cfg.analysis.backend, "used": choices.backend_used, "reason": choices.backend_reason,
                    "detail": choices.backend_detail},
        "source": source_info,
        "simulated": bool(source_info.get("simulated", False)),
        "data": plan.index.describe() if plan.index is not None else {},
        "num_items": len(plan.item_ids),
        "stage_timing": "CUDA events" if device.type == "cuda" else "wall clock",
    }


def source_batches(plan: RunPlan, source, device: torch.device, timer: StageTimer, figures: FigureData, run: dict,
                   positions: list[int], skipped: Callable, echo: Callable[[str], None], shard: bool,
                   write_cache: bool = True) -> Iterator[PreparedBatch]:
    """Items `positions` as PreparedBatches: read from the feature cache, or loaded and run through the model."""
    cfg = plan.cfg
    if plan.cache is not None:
        return cached_batches(plan, positions, device, timer, skipped)
    data = replace(cfg.data, decode=plan.choices.decode)  # as resolved for the identity
    loader = make_loader(plan.index, data, cfg.batch_size, device, indices=positions)
    run["loader"] = {**loader.describe(), "decode_requested": cfg.data.decode}
    if not shard and write_cache:  # a shard leaves the index errors to the coordinator
        plan.store.write_errors([e for e in plan.index.bad if e[0] not in plan.finished], "index")
    cache_writer = None
    if cfg.save_features is not None and write_cache:
        cache_writer = FeatureCacheWriter(cfg.save_features, cfg.prompts, cfg.class_ids, cfg.analysis.taus, run["source"],
                                          plan.source_identity, cfg.cache_dtype)
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
        wants_figures = figures.wanted_in(batch.image_ids)
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


def cached_batches(plan: RunPlan, positions: list[int], device: torch.device, timer: StageTimer,
                   skipped: Callable) -> Iterator[PreparedBatch]:
    """Batches read back from a feature cache (no model); files that fail their checks go to `skipped`."""
    cfg = plan.cfg
    for batch in timed(plan.cache.batches(positions, cfg.batch_size, cfg.analysis.taus, device), timer):
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


def analyse(prep: PreparedBatch, plan: RunPlan, backend, device: torch.device, timer: StageTimer, keep_maps: bool):
    """One batch through the analysis; device and data failures as one-line errors."""
    cfg, src = plan.cfg, prep.source
    try:
        with timer.stage("analysis"):
            return analyze_batch(src, cfg.analysis, backend, cfg.prompts, cfg.class_ids, plan.num_classes,
                                 gt_tokens=None if prep.gt_tokens is None else prep.gt_tokens.to(device),
                                 gt_mask=None if prep.gt_mask is None else prep.gt_mask.to(device), keep_maps=keep_maps)
    except torch.OutOfMemoryError:
        raise DatrError(f"out of memory on {device} in the analysis at --batch-size {cfg.batch_size}; lower --batch-size") from None
    except ValueError as err:  # NaN/inf features and the like, from the kernels
        raise DataError(f"batch starting at {src.image_ids[0]}: {err}") from None


def write_shard(plan: RunPlan, columns: dict[str, list], positions: list[int]) -> Path:
    """One batch's rows, with what each item was computed from (hashed here, in the writer thread)."""
    digests: dict[str, str | None] = {}
    records = {plan.item_ids[p]: fingerprint(plan.inputs[p], digests) for p in positions}
    return plan.store.write_rows(columns, positions[0], records)


def analyse_batches(batches: Iterator[PreparedBatch], plan: RunPlan, backend, device: torch.device, timer: StageTimer,
                    figures: FigureData, reservoir, done: Callable[[int], None]) -> None:
    """Analyse every batch; a writer thread writes each batch's row shard while the next one computes."""
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datr-writer")
    pending = []
    try:
        for prep in batches:
            src = prep.source
            out = analyse(prep, plan, backend, device, timer, keep_maps=figures.wanted_in(src.image_ids))
            figures.keep(out.maps, prep)
            pending.append(writer.submit(write_shard, plan, out.columns, prep.positions))
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


def figure_pass(plan: RunPlan, source, device: torch.device, backend, timer: StageTimer, figures: FigureData, run: dict,
                echo: Callable[[str], None]) -> None:
    """Finished items whose figures are missing: analysed again for their maps only (no rows, no cache, no sample)."""
    def skipped(errors: list[tuple[str, str, str]], _tag: str) -> None:
        for image_id, _path, message in errors:
            echo(f"figures: {image_id} cannot be drawn: {message}")

    for prep in source_batches(plan, source, device, timer, figures, run, figures.redo, skipped, echo, shard=False,
                               write_cache=False):
        figures.keep(analyse(prep, plan, backend, device, timer, keep_maps=True).maps, prep)
