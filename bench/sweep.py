"""`datr bench sweep`: the whole sweep on the simulated source, per stage, next to the
paper's way of doing the same analysis (one image and one problem at a time with
scikit-learn and scipy), in the same process on the same decoder outputs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench.machine import machine_info
from engine.core.config import AnalysisConfig, DataConfig, RunConfig
from engine.core.devices import parse_device
from engine.core.errors import ConfigError
from engine.data.index import index_dataset
from engine.data.loader import load_item
from engine.data.scenes import write_scene_set
from engine.run.sweep import run_sweep
from engine.sources.simulated import SimulatedSource


@dataclass(frozen=True)
class SweepBenchConfig:
    device: str = "cpu"
    images: int = 8
    batch_size: int = 4
    reference_images: int = 2
    n_init: int = 10
    image_size: tuple[int, int] = (640, 480)
    workers: int = 0


def paper_way(tokens: np.ndarray, queries: np.ndarray, scores: np.ndarray, query_masks: np.ndarray, cfg: AnalysisConfig) -> list[float]:
    """One image, one scope at a time, as the paper's script does; returns the flip ratios.

    tokens (N, C), queries (P, Q, C), scores (P, Q), query_masks (P, Q, N).
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    tau, alpha, k, d = cfg.taus[0], cfg.alphas[0], cfg.ks[0], cfg.dims[0]

    def cluster(x):
        z = PCA(n_components=d, svd_solver="covariance_eigh").fit_transform(x)
        return KMeans(n_clusters=k, n_init=cfg.n_init, random_state=cfg.seed).fit(z).labels_

    encoder = cluster(tokens)
    kept = scores >= tau
    scopes = [(queries[kept], query_masks[kept])] + [(queries[p][kept[p]], query_masks[p][kept[p]]) for p in range(len(queries))]
    flips = []
    for keys, masks in scopes:
        if len(keys):
            logits = tokens @ keys.T / np.sqrt(tokens.shape[1])
            w = np.exp(logits - logits.max(1, keepdims=True))
            attended = (w / w.sum(1, keepdims=True)) @ keys
            weights = masks.max(0)
        else:
            attended, weights = np.zeros_like(tokens), np.zeros(tokens.shape[0])
        labels = cluster(tokens + alpha * attended)
        table = np.zeros((k, k))
        np.add.at(table, (labels, encoder), 1)
        rows, cols = linear_sum_assignment(table, maximize=True)
        aligned = cols[np.argsort(rows)][labels]
        eff = weights >= cfg.effective_threshold
        flips.append(float((aligned[eff] != encoder[eff]).mean()) if eff.any() else float("nan"))
    return flips


def run_sweep_bench(cfg: SweepBenchConfig, echo: Callable[[str], None] = print) -> dict:
    if cfg.reference_images > cfg.images:
        raise ConfigError(f"--reference-images ({cfg.reference_images}) cannot exceed --images ({cfg.images})")
    device = parse_device(cfg.device)
    analysis = AnalysisConfig(n_init=cfg.n_init, controls=False)  # like for like: the paper's way has no controls
    with tempfile.TemporaryDirectory(prefix="datr-bench-") as tmp:
        root = write_scene_set(Path(tmp) / "scenes", cfg.images, size=cfg.image_size, seed=0)
        run_cfg = RunConfig(dataset=root, out=Path(tmp) / "sweep", model="simulated", device=str(device),
                            batch_size=cfg.batch_size, num_workers=cfg.workers, analysis=analysis)
        # warm-up on one batch so allocators and kernels are ready
        echo(f"sweep bench: warm-up, then {cfg.images} simulated images end to end ...")
        run_sweep(replace(run_cfg, out=Path(tmp) / "warm", limit=1), echo=lambda s: None, show_progress=False)
        start = time.perf_counter()
        result = run_sweep(run_cfg, echo=lambda s: None, show_progress=False)
        total = time.perf_counter() - start
        stages = result.run["seconds_per_stage"]

        # the paper's way, on the same decoder outputs for the first reference images
        echo(f"sweep bench: the paper's way (sklearn, one problem at a time) on {cfg.reference_images} image(s) ...")
        index = index_dataset(DataConfig(root=root, num_workers=0))
        source = SimulatedSource(run_cfg.prompts, run_cfg.class_ids, "cpu")
        ref_seconds = 0.0
        for i in range(cfg.reference_images):
            item = load_item(index, i)
            batch = source.run_batch(item.image[None], [item.image_id], analysis.taus, gt_mask=item.gt_mask[None], gt_tokens=item.gt_tokens[None])
            tokens = batch.features[0].flatten(1).T.double().numpy()
            qm = batch.query_masks[0].flatten(2).float().numpy()
            t0 = time.perf_counter()
            paper_way(tokens, batch.queries[0].double().numpy(), batch.scores[0].numpy(), qm, analysis)
            ref_seconds += time.perf_counter() - t0

    n = result.images_done
    ms_analysis = 1e3 * stages.get("analysis", 0.0) / n
    ms_ref = 1e3 * ref_seconds / cfg.reference_images
    rows = [
        {"name": "sweep_end_to_end", "ms_per_image": 1e3 * total / n, "images_per_s": n / total},
        {"name": "analysis_batched", "ms_per_image": ms_analysis, "images_per_s": 1e3 / ms_analysis},
        {"name": "analysis_paper_way_sklearn", "ms_per_image": ms_ref, "images_per_s": 1e3 / ms_ref},
    ]
    for stage, seconds in stages.items():
        rows.append({"name": f"stage_{stage}", "ms_per_image": 1e3 * seconds / n, "images_per_s": n / seconds if seconds else None})
    echo(f"sweep bench: {n} simulated images of {cfg.image_size[0]}x{cfg.image_size[1]}, batch {cfg.batch_size}, "
         f"device {device}, n_init {cfg.n_init}, {torch.get_num_threads()} thread(s)")
    for row in rows:
        ips = row["images_per_s"]
        echo(f"  {row['name']:<28} {row['ms_per_image']:10.1f} ms/image  {'' if ips is None else f'{ips:8.2f} img/s'}")
    echo(f"  analysis speedup vs the paper's way: {ms_ref / ms_analysis:.2f}x")
    return {
        "bench": "sweep",
        "machine": machine_info(device),
        "device": str(device),
        "batch_size": cfg.batch_size,
        "config": asdict(cfg),
        "results": rows,
        "analysis_speedup_vs_paper_way": ms_ref / ms_analysis,
        "simulated": True,
    }
