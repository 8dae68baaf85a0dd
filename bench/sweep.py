"""`datr bench sweep`: the whole sweep on the simulated source, per stage, next to the
paper's way of doing the same analysis (one image and one problem at a time with
scikit-learn and scipy, over the same alpha x tau grid), in the same process on the same
decoder outputs. Beside the times: the peak memory of each way (bench/memory.py), and the
aten ops, host synchronisations and host-to-device copies one `analyze_batch` call issues at
each of `count_batches` (bench/dispatch.py; counted on the CPU so a regression shows without a
GPU, with one KMeans call per batch as on a GPU, at the default grid; on a CUDA device the same
calls are counted there too, with the sync debug mode's warnings).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import engine.analysis.controls as controls_module
from bench.dispatch import OpCounter, SyncWarnings
from bench.machine import machine_info
from bench.memory import PeakMemory, max_rss_mb
from engine.analysis.batch import analyze_batch
from engine.core.config import AnalysisConfig, DataConfig, RunConfig
from engine.core.devices import parse_device
from engine.core.errors import ConfigError
from engine.data.index import index_dataset
from engine.data.loader import load_item
from engine.data.scenes import write_scene_set
from engine.run.sweep import run_sweep
from engine.sources.simulated import SimulatedSource
from kernels.backends import resolve_backend


@dataclass(frozen=True)
class SweepBenchConfig:
    device: str = "cpu"
    images: int = 8
    batch_size: int = 4
    reference_images: int = 2
    n_init: int = 10
    image_size: tuple[int, int] = (640, 480)
    workers: int = 0
    alphas: tuple[float, ...] = (0.3,)
    taus: tuple[float, ...] = (0.5,)
    count_batches: tuple[int, ...] = (1, 16)  # batch sizes at which ops and syncs are counted (on the CPU)
    seeds: int = AnalysisConfig.seeds  # the seed ensemble whose cost ensemble_cost measures


def paper_way(tokens: np.ndarray, queries: np.ndarray, scores: np.ndarray, query_masks: np.ndarray, cfg: AnalysisConfig) -> list[float]:
    """One image, one (tau, alpha, scope) at a time, as the paper's script does; returns the flip ratios.

    tokens (N, C), queries (P, Q, C), scores (P, Q), query_masks (P, Q, N).
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    k, d = cfg.ks[0], cfg.dims[0]

    def cluster(x):
        z = PCA(n_components=d, svd_solver="covariance_eigh").fit_transform(x)
        return KMeans(n_clusters=k, n_init=cfg.n_init, random_state=cfg.seed).fit(z).labels_

    encoder = cluster(tokens)
    flips = []
    for tau in cfg.taus:
        kept = scores >= tau
        scopes = [(queries[kept], query_masks[kept])] + [(queries[p][kept[p]], query_masks[p][kept[p]]) for p in range(len(queries))]
        for alpha in cfg.alphas:
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


def simulated_batch(index, source: SimulatedSource, analysis: AnalysisConfig, batch_size: int):
    """The simulated source's outputs for `batch_size` items (the scene set repeated as needed) and their GT."""
    items = [load_item(index, i % len(index.items)) for i in range(batch_size)]
    images = torch.stack([it.image for it in items])
    gt_mask = torch.stack([it.gt_mask for it in items])
    gt_tokens = torch.stack([it.gt_tokens for it in items])
    batch = source.run_batch(images, [f"{it.image_id}#{i}" for i, it in enumerate(items)], analysis.taus,
                             gt_mask=gt_mask, gt_tokens=gt_tokens)
    return batch, gt_tokens, gt_mask


def count_analysis_ops(index, run_cfg: RunConfig, batch_sizes: tuple[int, ...], device: str = "cpu") -> list[dict]:
    """aten ops, host syncs and host-to-device copies of one analyze_batch call at each batch size (torch
    backend on `device`), at the default grid (one alpha, one tau) so that counts from different grids
    compare; without the flip-ratio controls, as the timed analysis (they add the null problems' work and
    the reseed KMeans). On the CPU the copies are 0 and host_data_tensors (tensors built from host values,
    bench/dispatch.py) stands for them; on CUDA the sync debug mode's warnings are counted too."""
    analysis = AnalysisConfig(n_init=run_cfg.analysis.n_init, controls=False)
    source = SimulatedSource(run_cfg.prompts, run_cfg.class_ids, "cpu")
    backend, _ = resolve_backend("torch", torch.device(device))
    out = []
    for b in batch_sizes:
        batch, gt_tokens, gt_mask = simulated_batch(index, source, analysis, b)
        # one KMeans call per batch, as on a GPU with room for it (on a CPU the analysis splits
        # KMeans into 128 MiB chunks, each with its own syncs; see kmeans_memory_budget)
        with (mock.patch.object(controls_module, "kmeans_memory_budget", lambda device: 2**62),
              SyncWarnings(device) as sync, OpCounter() as count):
            analyze_batch(batch, analysis, backend, run_cfg.prompts, run_cfg.class_ids, len(run_cfg.class_ids),
                          gt_tokens=gt_tokens, gt_mask=gt_mask)
        out.append({"batch_size": b, "device": device, "aten_ops": count.ops, "host_syncs": count.syncs,
                    "host_to_device": count.host_to_device, "host_data_tensors": count.host_data,
                    "sync_warnings": sync.count, "aten_ops_per_image": count.ops / b,
                    "syncs_by_op": dict(count.sync_by_op), "copies_by_op": dict(count.copy_by_op),
                    "sync_warnings_where": sync.as_dict()["where"]})
    return out


def run_sweep_bench(cfg: SweepBenchConfig, echo: Callable[[str], None] = print) -> dict:
    if cfg.reference_images > cfg.images:
        raise ConfigError(f"--reference-images ({cfg.reference_images}) cannot exceed --images ({cfg.images})")
    device = parse_device(cfg.device)
    # like for like: the paper's way has no controls and no seed ensemble (their cost: ensemble_cost)
    analysis = AnalysisConfig(n_init=cfg.n_init, alphas=tuple(cfg.alphas), taus=tuple(cfg.taus), controls=False, seeds=0)
    with tempfile.TemporaryDirectory(prefix="datr-bench-") as tmp:
        root = write_scene_set(Path(tmp) / "scenes", cfg.images, size=cfg.image_size, seed=0)
        run_cfg = RunConfig(data=DataConfig(root=root, num_workers=cfg.workers), out=Path(tmp) / "sweep", model="simulated",
                            device=str(device), batch_size=cfg.batch_size, analysis=analysis)
        # warm-up on one batch so allocators and kernels are ready
        echo(f"sweep bench: warm-up, then {cfg.images} simulated images end to end ...")
        run_sweep(replace(run_cfg, out=Path(tmp) / "warm", data=replace(run_cfg.data, limit=1)), echo=lambda s: None, show_progress=False)
        with PeakMemory(device) as peak_batched:
            start = time.perf_counter()
            result = run_sweep(run_cfg, echo=lambda s: None, show_progress=False)
            total = time.perf_counter() - start

        # the paper's way, on the same decoder outputs for the first reference images
        echo(f"sweep bench: the paper's way (sklearn, one problem at a time) on {cfg.reference_images} image(s) ...")
        index = index_dataset(DataConfig(root=root, num_workers=0))
        ref_seconds, peak_paper = time_paper_way(index, run_cfg, cfg.reference_images)
        counts = count_analysis_ops(index, run_cfg, cfg.count_batches) if cfg.count_batches else []
        if cfg.count_batches and device.type == "cuda":  # the same calls on the device: its real copies and syncs
            counts += count_analysis_ops(index, run_cfg, cfg.count_batches, str(device))
        echo("sweep bench: the analysis with the default controls, without and with the seed ensemble ...")
        ensemble = time_ensemble_cost(index, run_cfg, cfg, device)
    timing = {"images": result.images_done, "total_s": total, "stages": result.run["seconds_per_stage"],
              "reference_s": ref_seconds}
    report = sweep_report(cfg, device, timing, {"batched_sweep": peak_batched, "paper_way": peak_paper}, counts, echo)
    echo(f"  seed ensemble ({ensemble['seeds']} seeds, controls on): {ensemble['ms_per_image_with']:.0f} ms/image with, "
         f"{ensemble['ms_per_image_without']:.0f} without: {ensemble['ratio']:.2f}x (best of {ensemble['repeats']} each)")
    stage_peaks = ", ".join(f"{stage} {_mb(p)}" for stage, p in ensemble["peak_memory_per_stage"].items())
    echo(f"  peak memory per stage above its start: {stage_peaks}")
    return report | {"ensemble_cost": ensemble}


def time_ensemble_cost(index, run_cfg: RunConfig, cfg: SweepBenchConfig, device: torch.device, repeats: int = 2) -> dict:
    """The analysis (analyze_batch on the same simulated batches, controls on as by default) without the
    seed ensemble (--seeds 0, the analysis before it existed) and with the default seeds, alternating
    the two `repeats` times; the best time of each, per image, and the peak memory of each stage: the
    model (the simulated source's outputs) and the analysis both ways."""
    with_ensemble = AnalysisConfig(n_init=cfg.n_init, alphas=tuple(cfg.alphas), taus=tuple(cfg.taus), seeds=cfg.seeds)
    variants = {"without": replace(with_ensemble, seeds=0), "with": with_ensemble}
    source = SimulatedSource(run_cfg.prompts, run_cfg.class_ids, str(device))
    with PeakMemory(device) as model_peak:
        batches = [batch_of(index, source, with_ensemble, k, cfg.batch_size) for k in range(max(1, cfg.images // cfg.batch_size))]
    backend, _ = resolve_backend("torch", device)
    best = {name: float("inf") for name in variants}
    peaks: dict[str, dict] = {}
    for _ in range(repeats):
        for name, analysis in variants.items():
            with PeakMemory(device) as peak:
                start = time.perf_counter()
                for batch, gt_tokens, gt_mask in batches:
                    analyze_batch(batch, analysis, backend, run_cfg.prompts, run_cfg.class_ids, len(run_cfg.class_ids),
                                  gt_tokens=gt_tokens, gt_mask=gt_mask)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best[name] = min(best[name], time.perf_counter() - start)
            peaks[name] = max(peaks.get(name, {}), peak.as_dict(), key=lambda p: p.get("host_peak_mb") or 0)
    images = len(batches) * cfg.batch_size
    return {"seeds": with_ensemble.seeds, "n_init": cfg.n_init, "images": images, "repeats": repeats,
            "ms_per_image_without": 1e3 * best["without"] / images, "ms_per_image_with": 1e3 * best["with"] / images,
            "ratio": best["with"] / best["without"],
            "peak_memory_per_stage": {"model": model_peak.as_dict(), "analysis_without_ensemble": peaks["without"],
                                      "analysis_with_ensemble": peaks["with"]}}


def batch_of(index, source: SimulatedSource, analysis: AnalysisConfig, k: int, batch_size: int):
    """Batch k of the scene set (items k * B ... k * B + B - 1, wrapping round) and its GT."""
    items = [load_item(index, (k * batch_size + i) % len(index.items)) for i in range(batch_size)]
    batch = source.run_batch(torch.stack([it.image for it in items]), [it.image_id for it in items], analysis.taus,
                             gt_mask=torch.stack([it.gt_mask for it in items]),
                             gt_tokens=torch.stack([it.gt_tokens for it in items]))
    return batch, torch.stack([it.gt_tokens for it in items]), torch.stack([it.gt_mask for it in items])


def time_paper_way(index, run_cfg: RunConfig, images: int) -> tuple[float, PeakMemory]:
    """Seconds the paper's way takes on the first `images` images (their decoder outputs from the
    simulated source), and its peak memory."""
    source = SimulatedSource(run_cfg.prompts, run_cfg.class_ids, "cpu")
    seconds = 0.0
    with PeakMemory("cpu") as peak:
        for i in range(images):
            batch, _, _ = simulated_batch_at(index, source, run_cfg.analysis, i)
            tokens = batch.features[0].flatten(1).T.double().numpy()
            qm = batch.query_masks[0].flatten(2).float().numpy()
            t0 = time.perf_counter()
            paper_way(tokens, batch.queries[0].double().numpy(), batch.scores[0].numpy(), qm, run_cfg.analysis)
            seconds += time.perf_counter() - t0
    return seconds, peak


def sweep_report(cfg: SweepBenchConfig, device: torch.device, timing: dict, peaks: dict[str, PeakMemory],
                 counts: list[dict], echo: Callable[[str], None]) -> dict:
    """The bench's rows and JSON from its measurements; prints the table."""
    n, stages = timing["images"], timing["stages"]
    ms_analysis = 1e3 * stages.get("analysis", 0.0) / n
    ms_ref = 1e3 * timing["reference_s"] / cfg.reference_images
    rows = [
        {"name": "sweep_end_to_end", "ms_per_image": 1e3 * timing["total_s"] / n, "images_per_s": n / timing["total_s"]},
        {"name": "analysis_batched", "ms_per_image": ms_analysis, "images_per_s": 1e3 / ms_analysis},
        {"name": "analysis_paper_way_sklearn", "ms_per_image": ms_ref, "images_per_s": 1e3 / ms_ref},
    ]
    for stage, seconds in stages.items():
        rows.append({"name": f"stage_{stage}", "ms_per_image": 1e3 * seconds / n, "images_per_s": n / seconds if seconds else None})
    memory = {name: peak.as_dict() for name, peak in peaks.items()} | {"process_max_rss_mb": round(max_rss_mb(), 1)}
    grid = f"{len(cfg.alphas)} alpha x {len(cfg.taus)} tau (alphas {list(cfg.alphas)}, taus {list(cfg.taus)})"
    echo(f"sweep bench: {n} simulated images of {cfg.image_size[0]}x{cfg.image_size[1]}, batch {cfg.batch_size}, "
         f"device {device}, n_init {cfg.n_init}, grid {grid}, {torch.get_num_threads()} thread(s)")
    for row in rows:
        ips = row["images_per_s"]
        echo(f"  {row['name']:<28} {row['ms_per_image']:10.1f} ms/image  {'' if ips is None else f'{ips:8.2f} img/s'}")
    echo(f"  analysis speedup vs the paper's way: {ms_ref / ms_analysis:.2f}x")
    echo(f"  peak memory above start: batched sweep {_mem(peaks['batched_sweep'])}, paper's way {_mem(peaks['paper_way'])}; "
         f"process max RSS {memory['process_max_rss_mb']:.0f} MiB")
    for c in counts:
        warned = "" if c["sync_warnings"] is None else f", {c['sync_warnings']} sync warnings"
        echo(f"  analyze_batch at batch {c['batch_size']:>3} on {c['device']}: {c['aten_ops']:>7} aten ops "
             f"({c['aten_ops_per_image']:.0f} per image), {c['host_syncs']:>5} host syncs, "
             f"{c['host_to_device']} host-to-device copies, {c['host_data_tensors']} host-data tensors{warned}")
    return {"bench": "sweep", "machine": machine_info(device), "device": str(device), "batch_size": cfg.batch_size,
            "config": asdict(cfg), "grid": {"alphas": list(cfg.alphas), "taus": list(cfg.taus)}, "results": rows,
            "analysis_speedup_vs_paper_way": ms_ref / ms_analysis, "peak_memory": memory, "dispatch_counts": counts,
            "simulated": True}


def simulated_batch_at(index, source: SimulatedSource, analysis: AnalysisConfig, i: int):
    """The simulated source's outputs for item i alone."""
    item = load_item(index, i)
    batch = source.run_batch(item.image[None], [item.image_id], analysis.taus, gt_mask=item.gt_mask[None],
                             gt_tokens=item.gt_tokens[None])
    return batch, item.gt_tokens[None], item.gt_mask[None]


def _mb(peak: dict) -> str:
    device = peak.get("device_peak_mb")
    return f"host {peak.get('host_peak_mb', 0):.0f} MiB" + ("" if device is None else f", device {device:.0f} MiB")


def _mem(peak: PeakMemory) -> str:
    host = f"host {peak.host_mb:.0f} MiB"
    return host if peak.device_mb is None else f"device {peak.device_mb:.0f} MiB, {host}"
