"""A run's identity: everything that decides its rows, and the check that keeps `--resume` honest.

The identity is a flat dict of option name -> value (the analysis grid and parameters,
the scopes, the model and its weights, the data and how it becomes model inputs, the
row format's version) and its sha256 fingerprint; run.json carries both. `--resume`
into a folder whose identity differs is refused, naming the options that differ.

Not part of it, on purpose: --dataset-sample (not in the rows; the saved sample checks
its own size), --limit and new images (extending a run), --batch-size,
--device, --num-workers and threads (they change only the last float digits, see
README), and where the output goes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engine.analysis.rows import ROWS_VERSION
from engine.core.config import RunConfig
from engine.core.errors import ConfigError
from engine.data.index import DatasetIndex
from engine.sources.cache import FeatureCacheReader

# identity key -> the option a user changes (for the refusal message)
OPTION_NAMES = {
    "alphas": "--alpha", "ks": "--clusters", "dims": "--dims", "taus": "--tau", "n_init": "--n-init",
    "max_iter": "--max-iter", "tol": "--tol", "seed": "--seed", "backend": "--backend", "eigh": "--eigh",
    "prompts": "--prompts", "class_ids": "class_ids (run.toml)", "model": "--model",
    "checkpoint": "--checkpoint", "simulated": "[simulated] (run.toml)", "seeds": "--seeds", "dataset": "DATASET", "split": "--split",
    "mode": "--mode", "tile_overlap": "--tile-overlap", "dataset_kind": "--dataset", "from_cache": "--from-cache",
    "rows_version": "the datr version (row format)", "kmeans_init": "--kmeans-init", "controls": "--controls",
}


def run_identity(cfg: RunConfig, index: DatasetIndex | None, cache: FeatureCacheReader | None) -> dict:
    """The options that decide the rows, resolved (the dataset kind as detected, paths absolute)."""
    from dataclasses import asdict

    analysis = asdict(cfg.analysis)
    analysis.pop("dataset_sample")  # not in the rows; the saved sample checks its own size (engine.run.sample)
    identity: dict = {"rows_version": ROWS_VERSION, **analysis}
    identity.update(prompts=list(cfg.prompts), class_ids=list(cfg.class_ids))
    if cache is not None:
        identity["from_cache"] = {"root": str(cache.root.resolve()),
                                  **{k: cache.meta.get(k) for k in ("source", "taus", "class_ids", "dtype")}}
        return identity
    identity["model"] = cfg.model
    if cfg.model == "sam3":
        from engine.sources.sam3.checkpoint import checkpoint_fingerprint

        fp = checkpoint_fingerprint(cfg.checkpoint)
        identity["checkpoint"] = {"sha256_first_mib": fp["sha256_first_mib"], "bytes": fp["bytes"]}
    else:
        identity["simulated"] = asdict(cfg.simulated)
    identity.update(dataset=str(Path(index.root).resolve()), split=index.split, mode=index.mode,
                    tile_overlap=index.tile_overlap, dataset_kind=index.dataset)
    return identity


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume(out: Path, previous: dict, identity: dict) -> None:
    """Refuse to resume `out` when its run.json's identity differs from this run's (one line)."""
    before = previous.get("identity")
    if before is None:
        raise ConfigError(f"--resume {out}: its run.json records no run identity (written by an older datr, or missing), "
                          "so its rows cannot be matched to these options; start a new --out")
    now = json.loads(json.dumps(identity, default=str))  # as run.json holds it (lists, strings)
    if before == now:
        return
    order = {k: i for i, k in enumerate(OPTION_NAMES)}
    keys = sorted(set(before) | set(now), key=lambda k: order.get(k, len(order)))
    differ = [k for k in keys if before.get(k) != now.get(k)]
    parts = [f"{OPTION_NAMES.get(k, k)} (run: {short(before.get(k))}, now: {short(now.get(k))})" for k in differ]
    raise ConfigError(f"--resume {out}: this run's rows were made with other options: {'; '.join(parts)}; resume with "
                      "the run's options (see its run.json) or choose a new --out")
