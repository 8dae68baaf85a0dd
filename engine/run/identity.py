"""A run's identity: everything that decides its rows, and the check that keeps `--resume` honest.

The identity is a flat dict of option name -> value (the analysis grid and parameters,
the scopes, the source (`source_identity`: the model with its full checkpoint hash, BPE
hash and autocast dtype, or the simulated config), the data and how it becomes model
inputs (the JPEG decode path actually used), the clustering backend and eigensolver as
resolved where the work runs, the row format's version) and its sha256 fingerprint;
run.json carries both. `--resume` into a folder whose identity differs is refused,
naming the options that differ. Which files each item was computed from is checked per
item (engine.run.inputs), not here.

Not part of it, on purpose: --dataset-sample (not in the rows; the saved sample checks
its own size), --limit and new images (extending a run), --batch-size, --num-workers,
threads and --device itself (with the simulated source or a cache they change only the
last float digits; for SAM3 the device decides the autocast dtype, which is in), and
where the output goes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from engine.analysis.rows import ROWS_VERSION
from engine.core.config import RunConfig
from engine.core.errors import ConfigError
from engine.data.index import DatasetIndex
from engine.sources.cache import FeatureCacheReader

# identity key -> the option a user changes (for the refusal message)
OPTION_NAMES = {
    "alphas": "--alpha", "ks": "--clusters", "dims": "--dims", "taus": "--tau", "n_init": "--n-init",
    "max_iter": "--max-iter", "tol": "--tol", "seed": "--seed", "backend": "--backend", "eigh": "--eigh",
    "backend_used": "--backend (as resolved on this machine)", "eigh_used": "--eigh (as resolved on this machine)",
    "prompts": "--prompts", "class_ids": "class_ids (run.toml)", "model": "--model",
    "checkpoint": "--checkpoint", "bpe": "--bpe", "autocast": "--device (SAM3 runs in bf16 autocast on CUDA)",
    "simulated": "[simulated] (run.toml)", "seeds": "--seeds", "dataset": "DATASET", "split": "--split",
    "mode": "--mode", "tile_overlap": "--tile-overlap", "dataset_kind": "--dataset", "decode": "--decode (as resolved)",
    "from_cache": "--from-cache", "rows_version": "the datr version (row format)", "kmeans_init": "--kmeans-init",
    "controls": "--controls",
}


def source_identity(cfg: RunConfig) -> dict:
    """What decides the features a model source hands over: the model and its weights, or the simulated config.

    SAM3: the full checkpoint hash, the BPE vocabulary's hash and the autocast dtype (bf16 on
    CUDA changes the features well beyond the last digits). The feature cache keeps this and
    refuses to be extended by another source.
    """
    if cfg.model != "sam3":
        return {"model": cfg.model, "simulated": asdict(cfg.simulated)}
    from engine.sources.sam3.checkpoint import bpe_fingerprint, checkpoint_fingerprint
    from engine.sources.sam3.source import autocast_dtype

    checkpoint = checkpoint_fingerprint(cfg.checkpoint)
    autocast = autocast_dtype("auto", torch.device(cfg.device.split(":")[0]))
    return {"model": "sam3", "checkpoint": {"sha256": checkpoint["sha256"], "bytes": checkpoint["bytes"]},
            "bpe": bpe_fingerprint(cfg.bpe_path)["sha256"], "autocast": str(autocast).replace("torch.", "") if autocast else "off"}


def run_identity(cfg: RunConfig, index: DatasetIndex | None, cache: FeatureCacheReader | None, resolved: dict,
                 source: dict | None) -> dict:
    """The options that decide the rows, resolved (the dataset kind as detected, paths absolute, backend and decode as chosen).

    resolved: {"backend_used", "eigh_used", "decode"} as engine.run.plan.resolve_choices found them;
    source: source_identity(cfg) (None for a cache run, whose cache records its own).
    """
    analysis = asdict(cfg.analysis)
    analysis.pop("dataset_sample")  # not in the rows; the saved sample checks its own size (engine.run.sample)
    identity: dict = {"rows_version": ROWS_VERSION, **analysis, "backend_used": resolved["backend_used"],
                      "eigh_used": resolved["eigh_used"]}
    identity.update(prompts=list(cfg.prompts), class_ids=list(cfg.class_ids))
    if cache is not None:
        identity["from_cache"] = {"root": str(cache.root.resolve()),
                                  **{k: cache.meta.get(k) for k in ("source_identity", "taus", "class_ids", "dtype")}}
        return identity
    identity.update(source)
    identity.update(dataset=str(Path(index.root).resolve()), split=index.split, mode=index.mode,
                    tile_overlap=index.tile_overlap, dataset_kind=index.dataset, decode=resolved["decode"])
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
