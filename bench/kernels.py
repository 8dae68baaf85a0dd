"""`datr bench kernels`: batched torch PCA + KMeans against scikit-learn, same process.

The workload is DESIGN.md's per image: 7 clustering problems (encoder, global DATR,
5 class DATR) of 5184 tokens x 256 channels, PCA to d = 32, KMeans k = 5, at n_init 10
and 1. The reference runs scikit-learn one problem at a time, as the paper does. The
two alternate for `repeats` rounds and the median round is reported, so a busy
machine slows both alike.

The torch path is the backend `resolve_backend("torch", device, eigh=cfg.eigh)` gives
(on CUDA: CuPy's batched syevj when CuPy is installed, else float64 LAPACK on the
host; see kernels/eigh.py). Per-stage figures (pca_fit, transform, kmeans) come from
CUDA events on a GPU -- recorded after a warm-up batch, read after one synchronize --
and from the wall clock on the CPU. Where faiss or cuML runs on the device, their
per-problem loops (kernels/backends) are timed on the reference images beside it; on
CUDA each available eigensolver is timed on the first batch's covariance stack.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from bench.machine import machine_info
from bench.synthetic import scope_problems, token_maps
from engine.core.errors import ConfigError
from engine.core.timing import StageTimer
from kernels.backends import BackendUnavailable, backend_status, resolve_backend
from kernels.backends.sklearn_backend import SklearnBackend
from kernels.eigh import EIGH_METHODS, eigh_function, eigh_status
from kernels.kmeans import kmeans
from kernels.pca import fix_signs, pca_transform, subspace_agreement, weighted_moments

PROBLEMS_PER_IMAGE = 7


@dataclass(frozen=True)
class KernelBenchConfig:
    device: str = "cpu"
    images: int = 8
    batch_size: int = 8
    reference_images: int = 4
    threads: int = 1
    d: int = 32
    k: int = 5
    n_inits: tuple[int, ...] = (10, 1)
    repeats: int = 3
    max_iter: int = 300
    tol: float = 1e-4
    seed: int = 0
    eigh: str = "auto"  # the torch backend's eigensolver (kernels/eigh.py)
    loops: tuple[str, ...] = ("faiss", "cuml")  # per-problem library loops timed beside it where present
    side: int = 72  # token grid side (72 x 72 = 5184 tokens); the GPU check's --quick uses a toy size
    channels: int = 256


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backend_pipeline(backend, x: torch.Tensor, cfg: KernelBenchConfig, n_init: int, timer: StageTimer | None = None):
    """PCA fit, projection, KMeans through a ClusterBackend; stages timed when a timer is given."""
    timer = timer or StageTimer(torch.device("cpu"))
    with timer.stage("pca_fit"):
        fit = backend.pca_fit(x, cfg.d)
    with timer.stage("transform"):
        z = pca_transform(x, fit)
    with timer.stage("kmeans"):
        km = backend.kmeans(z, cfg.k, n_init=n_init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed)
    return fit, km


def sklearn_pipeline(x: torch.Tensor, cfg: KernelBenchConfig, n_init: int):
    """The paper's way: PCA.fit_transform then KMeans.fit, one problem at a time."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    ev_ratio, comps, inertia, projected = [], [], [], []
    for xi in x.numpy():
        pca = PCA(n_components=cfg.d, svd_solver="covariance_eigh")
        zi = pca.fit_transform(xi)
        km = KMeans(n_clusters=cfg.k, n_init=n_init, max_iter=cfg.max_iter, tol=cfg.tol, random_state=cfg.seed).fit(zi)
        ev_ratio.append(pca.explained_variance_ratio_)
        comps.append(pca.components_)
        inertia.append(km.inertia_)
        projected.append(zi)
    return {
        "explained_variance_ratio": torch.as_tensor(np.stack(ev_ratio)),
        "components": fix_signs(torch.as_tensor(np.stack(comps))),
        "inertia": torch.as_tensor(np.array(inertia)),
        "projected": torch.as_tensor(np.stack(projected)),
    }


def time_eighs(x: torch.Tensor, echo: Callable[[str], None], repeats: int) -> list[dict]:
    """Each eigensolver that runs here, on the covariance stack of x (P, N, C), median of `repeats`."""
    _, cov, _ = weighted_moments(x, None)
    cov = 0.5 * (cov + cov.transpose(1, 2))
    rows = []
    for method in EIGH_METHODS:
        ok, why = eigh_status(method, x.device)
        if not ok:
            rows.append({"method": method, "skipped": why})
            continue
        solve = eigh_function(method)
        solve(cov)  # warm-up (handles, workspaces)
        timer, times = StageTimer(x.device), []
        for _ in range(repeats):
            timer.seconds.clear()
            with timer.stage("eigh"):
                solve(cov)
            times.append(timer.collect()["eigh"])
        ms = 1e3 * statistics.median(times)
        rows.append({"method": method, "ms_per_stack": ms, "ms_per_matrix": ms / cov.shape[0], "matrices": cov.shape[0]})
        echo(f"  eigh {method:<6} {ms:9.2f} ms for {cov.shape[0]} matrices {tuple(cov.shape[1:])} "
             f"({ms / cov.shape[0]:.3f} ms each)")
    return rows


@dataclass
class Workload:
    """What the bench runs: the torch backend, the batches of problems on the device, the reference problems."""

    device: torch.device
    backend: object
    backend_reason: str
    batches: list[torch.Tensor]  # (batch * 7, N, C) each, on the device
    ref_problems: torch.Tensor  # (reference_images * 7, N, C) on the CPU
    loops: list[tuple[str, object]]  # per-problem library backends (faiss, cuml) that run here


def prepare(cfg: KernelBenchConfig, echo: Callable[[str], None]) -> Workload:
    """Check the options, make the synthetic problems, pick the backends; one warm-up batch."""
    if cfg.reference_images > cfg.images:
        raise ConfigError(f"--reference-images ({cfg.reference_images}) cannot exceed --images ({cfg.images})")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device} was asked for but CUDA is not available here; use --device cpu")
    try:
        backend, backend_reason = resolve_backend("torch", device, eigh=cfg.eigh)
    except BackendUnavailable as err:
        raise ConfigError(f"bench kernels: {err}") from None
    tokens, classes = token_maps(cfg.images, side=cfg.side, channels=cfg.channels, seed=cfg.seed)
    problems = scope_problems(tokens, classes)  # (images * 7, N, C) on the CPU
    batches = [
        problems[i * PROBLEMS_PER_IMAGE : (i + cfg.batch_size) * PROBLEMS_PER_IMAGE].to(device)
        for i in range(0, cfg.images, cfg.batch_size)
    ]
    echo(f"kernels bench: {cfg.images} images x {PROBLEMS_PER_IMAGE} problems of {tuple(problems.shape[1:])}, "
         f"d={cfg.d}, k={cfg.k}, batch {cfg.batch_size} on {device}, sklearn on {cfg.reference_images} images, "
         f"{cfg.threads} thread(s)")
    echo(f"  torch backend: {backend_reason}")
    # warm-up (allocator, kernels, solver handles) on one batch
    backend_pipeline(backend, batches[0][:PROBLEMS_PER_IMAGE], cfg, 1)
    sync(device)
    loops = []
    for name in cfg.loops:
        ok, why = backend_status(name, device)
        if ok:
            loops.append((name, resolve_backend(name, device)[0]))
        else:
            echo(f"  {name} per-problem loop: skipped ({why})")
    return Workload(device, backend, backend_reason, batches, problems[: cfg.reference_images * PROBLEMS_PER_IMAGE], loops)


def time_n_init(work: Workload, cfg: KernelBenchConfig, n_init: int, echo: Callable[[str], None]):
    """The batched path, sklearn and the library loops at one n_init, alternating for `repeats` rounds.

    Returns (result rows, the figures for this n_init, the last batched outputs, the sklearn reference).
    """
    from threadpoolctl import threadpool_limits

    device = work.device
    loop_inputs = work.ref_problems.to(device)
    t_torch, t_ref, t_loops = [], [], defaultdict(list)
    timer = StageTimer(device)
    for _ in range(cfg.repeats):
        start = time.perf_counter()
        out = [backend_pipeline(work.backend, b, cfg, n_init, timer) for b in work.batches]
        sync(device)
        t_torch.append((time.perf_counter() - start) / cfg.images)
        with threadpool_limits(cfg.threads):
            start = time.perf_counter()
            ref = sklearn_pipeline(work.ref_problems, cfg, n_init)
            t_ref.append((time.perf_counter() - start) / cfg.reference_images)
            for name, loop_backend in work.loops:
                start = time.perf_counter()
                backend_pipeline(loop_backend, loop_inputs, cfg, n_init)
                sync(device)
                t_loops[name].append((time.perf_counter() - start) / cfg.reference_images)
    stage_ms = {name: 1e3 * s / (cfg.repeats * cfg.images) for name, s in timer.collect().items()}
    ms_torch, ms_ref = 1e3 * statistics.median(t_torch), 1e3 * statistics.median(t_ref)
    torch_inertia = torch.cat([km.inertia.cpu() for _, km in out])[: work.ref_problems.shape[0]].double()
    ratio = (torch_inertia / ref["inertia"].double()).numpy()
    rows = [
        {"name": f"torch_batched_n_init{n_init}", "ms_per_image": ms_torch, "images_per_s": 1e3 / ms_torch},
        {"name": f"sklearn_per_problem_n_init{n_init}", "ms_per_image": ms_ref, "images_per_s": 1e3 / ms_ref},
    ]
    figures = {"speedup_vs_sklearn": ms_ref / ms_torch, "inertia_ratio_median": float(np.median(ratio)),
               "inertia_ratio_max": float(ratio.max()), "stage_ms_per_image": stage_ms}
    echo(f"  n_init={n_init:<3} torch {ms_torch:9.2f} ms/image ({1e3 / ms_torch:7.2f} img/s)   "
         f"sklearn {ms_ref:9.2f} ms/image   speedup {ms_ref / ms_torch:5.2f}x   "
         f"inertia ratio median {np.median(ratio):.5f} max {ratio.max():.5f}")
    echo("             stages (" + ("CUDA events" if device.type == "cuda" else "wall clock") + "): "
         + ", ".join(f"{name} {ms:.3f}" for name, ms in stage_ms.items()) + " ms/image")
    for name, times in t_loops.items():
        ms_loop = 1e3 * statistics.median(times)
        rows.append({"name": f"{name}_per_problem_n_init{n_init}", "ms_per_image": ms_loop, "images_per_s": 1e3 / ms_loop})
        figures[f"speedup_vs_{name}_loop"] = ms_loop / ms_torch
        echo(f"             {name} per-problem loop {ms_loop:9.2f} ms/image   torch speedup {ms_loop / ms_torch:6.2f}x")
    return rows, figures, out, ref


def check_parity(fit, ref: dict, cfg: KernelBenchConfig, echo: Callable[[str], None]) -> dict:
    """PCA against sklearn on the reference problems; KMeans labels from shared initial centres (ARI must be 1)."""
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    # the first batch covers the reference problems when batch >= reference
    n_cmp = min(ref["explained_variance_ratio"].shape[0], fit.explained_variance_ratio.shape[0])
    ev_err = (fit.explained_variance_ratio[:n_cmp].cpu().double() - ref["explained_variance_ratio"][:n_cmp].double()).abs().max()
    agree = subspace_agreement(fit.components[:n_cmp].cpu().double(), ref["components"][:n_cmp].double()).min()
    z = ref["projected"].float()
    init = z[:, : cfg.k].clone()
    mine = kmeans(z, cfg.k, init=init, max_iter=cfg.max_iter, tol=cfg.tol)
    with threadpool_limits(cfg.threads):
        theirs = SklearnBackend().kmeans(z, cfg.k, n_init=1, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed, init=init)
    aris = [adjusted_rand_score(a, b) for a, b in zip(mine.labels.numpy(), theirs.labels.numpy(), strict=True)]
    echo(f"  parity: explained-variance-ratio max |diff| {float(ev_err):.2e}, subspace agreement min {float(agree):.6f}, "
         f"shared-init ARI min {min(aris):.6f}")
    return {"explained_variance_ratio_max_abs_diff": float(ev_err), "subspace_agreement_min": float(agree),
            "shared_init_ari_min": float(min(aris))}


def run_kernel_bench(cfg: KernelBenchConfig, echo: Callable[[str], None] = print) -> dict:
    """Time the paths, check parity on the reference images, return the JSON payload."""
    work = prepare(cfg, echo)
    results, per_n_init, stages_out = [], {}, {}
    for n_init in cfg.n_inits:
        echo(f"  n_init={n_init}: timing the batched path, then the per-problem references (this takes a while) ...")
        rows, figures, out, ref = time_n_init(work, cfg, n_init, echo)
        results += rows
        per_n_init[f"n_init{n_init}"] = figures
        stages_out[f"n_init{n_init}"] = figures["stage_ms_per_image"]
    eigh_rows = time_eighs(work.batches[0], echo, cfg.repeats) if work.device.type == "cuda" else []
    parity = check_parity(out[0][0], ref, cfg, echo)

    head = per_n_init[f"n_init{cfg.n_inits[0]}"]
    payload = {
        "bench": "kernels",
        "machine": machine_info(work.device),
        "device": str(work.device),
        "batch_size": cfg.batch_size,
        "config": asdict(cfg),
        "backend": {"name": work.backend.name, "reason": work.backend_reason, "eigh": getattr(work.backend, "eigh", None)},
        "timing": "CUDA events after a warm-up batch" if work.device.type == "cuda" else "wall clock after a warm-up batch",
        "results": results,
        "speedup_vs_sklearn": head["speedup_vs_sklearn"],
        "inertia_ratio_median": head["inertia_ratio_median"],
        "per_n_init": per_n_init,
        "stages_ms_per_image": stages_out,
        "parity": parity,
    }
    for name, _ in work.loops:
        payload[f"speedup_vs_{name}_loop"] = head[f"speedup_vs_{name}_loop"]
    if eigh_rows:
        payload["eigh"] = eigh_rows
    return payload
