"""What a sweep will do, decided once for the local and the Dask sweep alike.

`check_target` refuses what can be refused before --out is touched (a bad option, a
--resume with nothing to resume). `resolve_choices` turns the run's "auto" choices
(clustering backend, eigensolver, JPEG decode path) into what runs, on the machine that
runs it: the Dask client asks a worker, which may have a GPU the client lacks. `plan_run`
opens the result store, lists the items (from the dataset index, or from a feature
cache), checks the run's identity and every finished item's input files against the
folder, marks the shards of changed items stale (engine.run.inputs; the sweep moves them
out once run.json says it runs) and says what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.analysis.layout import build_slots
from engine.core.config import RunConfig
from engine.core.errors import BackendError, ConfigError, DataError
from engine.data.index import DatasetIndex, index_dataset
from engine.data.loader import resolve_decode
from engine.run.identity import check_resume, run_identity, source_identity
from engine.run.inputs import Planned, item_paths, planned_inputs, what_changed
from engine.run.record import read_run_json
from engine.run.store import ResultStore
from engine.sources.cache import FeatureCacheReader
from kernels.backends import BackendUnavailable, ClusterBackend, resolve_backend


@dataclass(frozen=True)
class Choices:
    """The run's "auto" choices as resolved where the work runs (the identity holds all but the reasons)."""

    backend_used: str
    eigh_used: str | None
    decode: str | None  # "cpu" | "cuda"; None for a run that reads a feature cache (nothing is decoded)
    backend_reason: str = ""
    backend_detail: str = ""
    decode_reason: str = ""

    def identity(self) -> dict:
        return {"backend_used": self.backend_used, "eigh_used": self.eigh_used, "decode": self.decode}


@dataclass
class RunPlan:
    """A sweep's items and what is left of them.

    index: the dataset's items (None when the run reads a feature cache: `cache`).
    item_ids: every item's id in order; todo: positions (into item_ids) still to analyse.
    inputs: per position, the item's files with their stat keys as planned (engine.run.inputs).
    recomputed: finished items to analyse again because their files changed -> what changed;
    stale_shards: the row shards that hold them (moved out of rows/ by `store.supersede`
    once run.json says the run is running; then `superseded` is where they went).
    source_identity: what decides the model's features (None for a cache run).
    """

    cfg: RunConfig
    store: ResultStore
    index: DatasetIndex | None
    cache: FeatureCacheReader | None
    item_ids: list[str]
    finished: set[str]
    todo: list[int]
    identity: dict
    choices: Choices
    inputs: list[Planned] = field(default_factory=list)
    source_identity: dict | None = None
    recomputed: dict[str, str] = field(default_factory=dict)
    stale_shards: set[Path] = field(default_factory=set)
    superseded: Path | None = None

    @property
    def known_ids(self) -> set[str]:
        """The ids errors.parquet may name: the items, and the files the index skipped."""
        return set(self.item_ids) | ({e[0] for e in self.index.bad} if self.index is not None else set())

    @property
    def skipped_resume(self) -> int:
        return len(self.item_ids) - len(self.todo)

    @property
    def num_classes(self) -> int:
        """GT classes the rows are scored against."""
        return max(self.cache.class_ids) + 1 if self.cache is not None else len(self.index.classes)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Their names (the UDD5 list the loader maps every dataset onto); a cache does not record them."""
        return None if self.cache is not None else tuple(self.index.classes)


def rows_per_item(cfg: RunConfig) -> int:
    """Rows one item gets: one per analysis slot per (d, k) grid point."""
    slots = build_slots(cfg.analysis, cfg.prompts, cfg.class_ids)
    return len(slots) * len(cfg.analysis.dims) * len(cfg.analysis.ks)


def check_target(cfg: RunConfig) -> None:
    """What is refused before --out is created or locked: a bad option, a --resume with nothing to resume.

    A --out with rows/ but no run.json was made by a run stopped while it planned (nothing
    in it yet): resuming it starts from the first item, as the interrupt message said.
    """
    cfg.validate()
    out = Path(cfg.out)
    if cfg.resume and not (out / "run.json").is_file() and not (out / "rows").is_dir():
        raise ConfigError(f"--resume: nothing to resume at {out.resolve()} (no run.json there); check --out "
                          "(a relative --out is taken from the current folder), or drop --resume to start a new run")


def resolve_choices(cfg: RunConfig, device: torch.device) -> tuple[ClusterBackend, Choices]:
    """The clustering backend (built) and the run's resolved choices on `device`, here."""
    backend, reason = open_backend(cfg, device)
    decode, why = (None, "a feature cache: nothing decoded") if cfg.from_cache is not None else resolve_decode(cfg.data.decode, device)
    return backend, Choices(backend.name, getattr(backend, "eigh", None), decode, reason, getattr(backend, "detail", ""), why)


def plan_run(cfg: RunConfig, echo: Callable[[str], None], choices: Choices, *, index: DatasetIndex | None = None,
             positions: list[int] | None = None, owner: bool = True) -> RunPlan:
    """Check cfg, open --out, list the items and the unfinished ones among `positions` (default: all).

    index: an index made already (`datr analyze` indexes one image); owner: this process
    holds --out's lock (engine.run.lock), so it clears the leftovers of killed writers,
    checks the run's identity against run.json and moves the shards of changed items out
    (a Dask shard does none of that: the client did).
    """
    cfg.validate()
    store = ResultStore(cfg.out, cfg.resume, clean_stale=owner)
    cache, index, item_ids = list_items(cfg, echo, index)
    source = None if cache is not None else {**source_identity(cfg), "decode": choices.decode}
    identity = run_identity(cfg, index, cache, choices.identity(), source)
    inputs = [planned_inputs(item_paths(index, cache, i)) for i in range(len(item_ids))]
    finished = store.finished_items() if cfg.resume else {}
    plan = RunPlan(cfg, store, index, cache, item_ids, set(finished), [], identity, choices, inputs, source)
    if owner and cfg.resume:
        previous = read_run_json(cfg.out)
        if previous or finished:
            check_resume(cfg.out, previous, identity)
        else:  # a run stopped while it planned, before it wrote anything: nothing to match
            echo(f"resume: {cfg.out} holds no run record yet (its run stopped before it started); starting from the first item")
        strangers = sorted(set(finished) - set(item_ids))
        if strangers:
            raise ConfigError(f"--resume {cfg.out}: it holds rows of {len(strangers)} image(s) that are not items of this "
                              f"run (e.g. {strangers[0]}: removed from the dataset, or a smaller --limit); resume with the "
                              "run's images, or choose a new --out")
        find_changed(plan, finished, echo)
    wanted = range(len(item_ids)) if positions is None else positions
    plan.todo = [i for i in wanted if item_ids[i] not in plan.finished]
    if cfg.resume:
        echo(f"resume: {len(item_ids) - len(plan.todo)} items already done, {len(plan.todo)} to go")
    return plan


def list_items(cfg: RunConfig, echo: Callable[[str], None], index: DatasetIndex | None):
    """(cache, index, item ids): the feature cache's images, or the dataset's items."""
    if cfg.from_cache is not None:
        cache = open_cache(cfg)
        return cache, None, list(cache.image_ids)
    index = index if index is not None else index_dataset(cfg.data)
    echo(f"data: {len(index.items)} items from {index.num_images} images ({index.dataset}: {index.dataset_reason}), "
         f"mode {index.mode}")
    if not index.has_gt and cfg.model == "simulated":
        raise DataError(f"{cfg.data.root}: the simulated model needs ground truth (gt/ PNGs); use --model sam3 with "
                        "--checkpoint, or a dataset with gt/")
    if not index.items:
        raise DataError(f"{cfg.data.root}: no images to analyse")
    check_class_ids(cfg, index)
    return None, index, [it.image_id for it in index.items]


def find_changed(plan: RunPlan, finished: dict[str, tuple[Path, list[dict] | None]], echo: Callable[[str], None]) -> None:
    """Finished items whose files changed since their rows were written: their shards are stale, their items redone."""
    position = {image_id: i for i, image_id in enumerate(plan.item_ids)}
    changed = {}
    for image_id, (_shard, recorded) in finished.items():
        reason = what_changed(recorded, plan.inputs[position[image_id]])
        if reason is not None:
            changed[image_id] = reason
    if not changed:
        return
    plan.stale_shards = {finished[i][0] for i in changed}
    moved = {image_id for image_id, (shard, _) in finished.items() if shard in plan.stale_shards}
    plan.recomputed = {image_id: changed.get(image_id, "shares a row shard with a changed item") for image_id in sorted(moved)}
    plan.finished -= moved
    first = sorted(changed)[0]
    echo(f"resume: {len(changed)} item(s) changed since their rows were written (e.g. {first}: {changed[first]}); "
         f"their {len(plan.stale_shards)} row shard(s) move to {plan.cfg.out / 'superseded'}/ and {len(moved)} item(s) "
         "are computed again")


def check_class_ids(cfg: RunConfig, index: DatasetIndex) -> None:
    """Class ids the dataset has (a prompt scored against a class the GT never holds would give IoU 0)."""
    beyond = [c for c in cfg.class_ids if c >= len(index.classes)]
    if beyond:
        raise ConfigError(f"class ids {list(cfg.class_ids)} (one per --prompts entry, or run.toml's class_ids): {beyond} beyond "
                          f"{index.dataset}'s {len(index.classes)} classes ({', '.join(f'{i} {n}' for i, n in enumerate(index.classes))}); "
                          "give one prompt per class of the dataset")


def open_cache(cfg: RunConfig) -> FeatureCacheReader:
    """The feature cache of --from-cache, checked against the run's prompts."""
    cache = FeatureCacheReader(cfg.from_cache)
    if cache.prompts != tuple(cfg.prompts):
        raise DataError(f"--from-cache {cfg.from_cache}: cached prompts {list(cache.prompts)} differ from --prompts "
                        f"{list(cfg.prompts)}")
    if cache.class_ids != tuple(cfg.class_ids):
        raise DataError(f"--from-cache {cfg.from_cache}: cached class ids {list(cache.class_ids)} differ from this run's "
                        f"{list(cfg.class_ids)} (run.toml's class_ids); use the cache's")
    cache.check_taus(cfg.analysis.taus)
    return cache


def open_backend(cfg: RunConfig, device: torch.device) -> tuple[ClusterBackend, str]:
    """The run's clustering backend on `device` and why it was chosen; a missing one is a BackendError."""
    try:
        return resolve_backend(cfg.analysis.backend, device, eigh=cfg.analysis.eigh)
    except BackendUnavailable as err:
        raise BackendError(f"--backend {cfg.analysis.backend}: {err}") from None
