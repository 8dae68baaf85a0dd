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

from engine.core.config import RunConfig
from engine.core.errors import BackendError, DataError
from engine.data.index import DatasetIndex, index_dataset
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


def plan_run(cfg: RunConfig, echo: Callable[[str], None], *, index: DatasetIndex | None = None,
             positions: list[int] | None = None, clean_stale: bool = True) -> RunPlan:
    """Check cfg, open --out, list the items and the unfinished ones among `positions` (default: all).

    index: an index made already (`datr analyze` indexes one image); clean_stale: clear
    the leftovers of killed writers in --out (not from a Dask shard: others may be writing).
    """
    cfg.validate()
    store = ResultStore(cfg.out, cfg.resume, clean_stale=clean_stale)
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
    finished = store.finished_ids() if cfg.resume else set()
    wanted = range(len(item_ids)) if positions is None else positions
    todo = [i for i in wanted if item_ids[i] not in finished]
    if cfg.resume:
        echo(f"resume: {len(item_ids) - len(todo)} items already done, {len(todo)} to go")
    return RunPlan(cfg, store, index, cache, item_ids, finished, todo)


def open_cache(cfg: RunConfig) -> FeatureCacheReader:
    """The feature cache of --from-cache, checked against the run's prompts."""
    cache = FeatureCacheReader(cfg.from_cache)
    if cache.prompts != tuple(cfg.prompts):
        raise DataError(f"--from-cache {cfg.from_cache}: cached prompts {list(cache.prompts)} differ from --prompts "
                        f"{list(cfg.prompts)}")
    return cache


def open_backend(cfg: RunConfig, device: torch.device) -> tuple[ClusterBackend, str]:
    """The run's clustering backend on `device` and why it was chosen; a missing one is a BackendError."""
    try:
        return resolve_backend(cfg.analysis.backend, device, eigh=cfg.analysis.eigh)
    except BackendUnavailable as err:
        raise BackendError(f"--backend {cfg.analysis.backend}: {err}") from None

