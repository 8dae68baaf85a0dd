"""What a sweep will do, decided once for the local and the Dask sweep alike.

`plan_run` checks the configuration, opens the result store, lists the items (from the
dataset index, or from a feature cache) and which of them are still to do. The device
and the clustering backend are resolved where the work runs (`open_backend`): the Dask
client may have no GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.analysis.layout import build_slots
from engine.core.config import RunConfig
from engine.core.errors import BackendError, ConfigError, DataError
from engine.data.index import DatasetIndex, index_dataset
from engine.run.identity import check_resume, run_identity
from engine.run.record import read_run_json
from engine.run.store import ResultStore
from engine.sources.cache import FeatureCacheReader
from kernels.backends import BackendUnavailable, ClusterBackend, resolve_backend


@dataclass
class RunPlan:
    """A sweep's items and what is left of them.

    index: the dataset's items (None when the run reads a feature cache: `cache`).
    item_ids: every item's id in order; todo: positions (into item_ids) still to analyse.
    """

    cfg: RunConfig
    store: ResultStore
    index: DatasetIndex | None
    cache: FeatureCacheReader | None
    item_ids: list[str]
    finished: set[str]
    todo: list[int]
    identity: dict

    @property
    def known_ids(self) -> set[str]:
        """The ids errors.parquet may name: the items, and the files the index skipped."""
        return set(self.item_ids) | ({e[0] for e in self.index.bad} if self.index is not None else set())

    @property
    def rows_per_item(self) -> int:
        """Rows one item gets: one per analysis slot per (d, k) grid point."""
        return rows_per_item(self.cfg)

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


def plan_run(cfg: RunConfig, echo: Callable[[str], None], *, index: DatasetIndex | None = None,
             positions: list[int] | None = None, owner: bool = True) -> RunPlan:
    """Check cfg, open --out, list the items and the unfinished ones among `positions` (default: all).

    index: an index made already (`datr analyze` indexes one image); owner: this process
    holds --out's lock (engine.run.lock), so it clears the leftovers of killed writers and
    checks the run's identity against run.json (a Dask shard does neither: the client did).
    """
    cfg.validate()
    store = ResultStore(cfg.out, cfg.resume, clean_stale=owner)
    cache = None
    if cfg.from_cache is not None:
        cache = open_cache(cfg)
        item_ids = list(cache.image_ids)
    else:
        index = index if index is not None else index_dataset(cfg.data_config())
        echo(f"data: {len(index.items)} items from {index.num_images} images ({index.dataset}: {index.dataset_reason}), "
             f"mode {index.mode}")
        if not index.has_gt and cfg.model == "simulated":
            raise DataError(f"{cfg.dataset}: the simulated model needs ground truth (gt/ PNGs); use --model sam3 with "
                            "--checkpoint, or a dataset with gt/")
        item_ids = [it.image_id for it in index.items]
    if not item_ids:
        raise DataError(f"{cfg.dataset}: no images to analyse")
    if index is not None:
        check_class_ids(cfg, index)
    identity = run_identity(cfg, index, cache)
    finished = store.finished_ids() if cfg.resume else set()
    if owner and cfg.resume and (finished or (cfg.out / "run.json").is_file()):
        check_resume(cfg.out, read_run_json(cfg.out), identity)
        strangers = sorted(finished - set(item_ids))
        if strangers:
            raise ConfigError(f"--resume {cfg.out}: it holds rows of {len(strangers)} image(s) that are not items of this "
                              f"run (e.g. {strangers[0]}: removed from the dataset, or a smaller --limit); resume with the "
                              "run's images, or choose a new --out")
    wanted = range(len(item_ids)) if positions is None else positions
    todo = [i for i in wanted if item_ids[i] not in finished]
    if cfg.resume:
        echo(f"resume: {len(item_ids) - len(todo)} items already done, {len(todo)} to go")
    return RunPlan(cfg, store, index, cache, item_ids, finished, todo, identity)


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

