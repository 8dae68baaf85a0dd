"""The dataset-level token sample of a sweep (--dataset-sample N): kept across resumes, clustered at the end.

DIR/reservoir.npz holds the sample so a resumed run (local or Dask) continues it;
DIR/dataset_clustering.json/.parquet hold the clustering at every (d, k) of the grid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from engine.analysis.dataset import TokenReservoir, cluster_dataset, write_dataset_clustering
from engine.core.config import RunConfig
from engine.core.errors import DataError
from engine.core.geometry import FEATURE_DIM, TOKEN_GRID

RESERVOIR_FILE = "reservoir.npz"


def open_reservoir(cfg: RunConfig, resuming_with_rows: bool, echo: Callable[[str], None],
                   forget: Iterable[str] = ()) -> TokenReservoir:
    """The dataset-level token sample: the saved one when resuming, else a new one.

    forget: items computed again (their files changed): their tokens leave the sample
    before they are offered anew. A token's priority hashes (seed, image id, token index),
    not its value, so the same slots come back and the sample is a fresh run's.
    """
    path = cfg.out / RESERVOIR_FILE
    if cfg.resume and path.is_file():
        reservoir = TokenReservoir.load(path)
        if reservoir.size != cfg.analysis.dataset_sample:
            raise DataError(f"{path}: holds a sample of {reservoir.size} tokens, not --dataset-sample "
                            f"{cfg.analysis.dataset_sample}; use the same value or a new --out")
        forget_items(reservoir, set(forget))
        return reservoir
    if resuming_with_rows:
        echo(f"warning: {path} is missing, so the dataset-level sample covers only the images analysed from now on")
    return TokenReservoir(cfg.analysis.dataset_sample, seed=cfg.analysis.seed, channels=FEATURE_DIM)


def forget_items(reservoir: TokenReservoir, image_ids: set[str]) -> None:
    """Drop these images' tokens from the sample (and from its count of tokens seen)."""
    if not image_ids:
        return
    keep = np.array([i not in image_ids for i in reservoir.image_ids], dtype=bool)
    for name in ("labels", "priorities", "image_ids", "token_index"):
        setattr(reservoir, name, getattr(reservoir, name)[keep])
    reservoir.tokens = reservoir.tokens[torch.from_numpy(keep)]
    reservoir.tokens_seen -= len(image_ids) * TOKEN_GRID * TOKEN_GRID


def cluster_reservoir(reservoir: TokenReservoir, cfg: RunConfig, backend, device: torch.device, num_classes: int,
                      class_names: tuple[str, ...] | None, echo: Callable[[str], None]) -> dict:
    """Dataset-level PCA + KMeans for every (d, k) of the grid, written next to the rows; what run.json records."""
    if len(reservoir) < max(cfg.analysis.ks):
        echo(f"dataset-level clustering skipped: only {len(reservoir)} tokens sampled")
        return {"skipped": f"only {len(reservoir)} tokens sampled"}
    a = cfg.analysis
    results = [
        cluster_dataset(reservoir, k, d, backend, a.seed, n_init=a.n_init, max_iter=a.max_iter, tol=a.tol,
                        num_classes=num_classes, class_names=class_names, device=device)
        for d in a.dims for k in a.ks
    ]
    write_dataset_clustering(cfg.out, results)
    for res in results:
        purity = "-" if res["purity"] is None else f"{res['purity']:.3f}"
        echo(f"dataset-level clustering (d={res['d']}, k={res['k']}): {res['tokens']} tokens from {res['images']} "
             f"images, purity {purity}")
    return {"file": "dataset_clustering.json", "tokens": len(reservoir), "backend": backend.name}
