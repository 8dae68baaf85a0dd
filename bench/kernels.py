"""`datr bench kernels`: batched torch PCA + KMeans against scikit-learn, same process.

The workload is DESIGN.md's per image: 7 clustering problems (encoder, global DATR,
5 class DATR) of 5184 tokens x 256 channels, PCA to d = 32, KMeans k = 5, at n_init 10
and 1. The reference runs scikit-learn one problem at a time, as the paper does. The
two alternate for `repeats` rounds and the median round is reported, so a busy
machine slows both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from bench.machine import machine_info
from bench.synthetic import scope_problems, token_maps
from engine.errors import ConfigError
from kernels.backends.sklearn_backend import SklearnBackend
from kernels.kmeans import kmeans
from kernels.pca import fix_signs, pca_fit, pca_transform, subspace_agreement

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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_pipeline(x: torch.Tensor, cfg: KernelBenchConfig, n_init: int):
    fit = pca_fit(x, cfg.d)
    z = pca_transform(x, fit)
    km = kmeans(z, cfg.k, n_init=n_init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed)
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


def run_kernel_bench(cfg: KernelBenchConfig, echo: Callable[[str], None] = print) -> dict:
    """Time both paths, check parity on the reference images, return the JSON payload."""
    if cfg.reference_images > cfg.images:
        raise ConfigError(f"--reference-images ({cfg.reference_images}) cannot exceed --images ({cfg.images})")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device} was asked for but CUDA is not available here; use --device cpu")
    from threadpoolctl import threadpool_limits

    tokens, classes = token_maps(cfg.images, seed=cfg.seed)
    problems = scope_problems(tokens, classes)  # (images * 7, N, C) on the CPU
    batches = [
        problems[i * PROBLEMS_PER_IMAGE : (i + cfg.batch_size) * PROBLEMS_PER_IMAGE].to(device)
        for i in range(0, cfg.images, cfg.batch_size)
    ]
    ref_problems = problems[: cfg.reference_images * PROBLEMS_PER_IMAGE]
    echo(f"kernels bench: {cfg.images} images x {PROBLEMS_PER_IMAGE} problems of {tuple(problems.shape[1:])}, "
         f"d={cfg.d}, k={cfg.k}, batch {cfg.batch_size} on {device}, sklearn on {cfg.reference_images} images, "
         f"{cfg.threads} thread(s)")

    # warm-up (allocator, kernels) on one batch
    torch_pipeline(batches[0][:PROBLEMS_PER_IMAGE], cfg, 1)
    sync(device)

    results, parity = [], {}
    for n_init in cfg.n_inits:
        t_torch, t_ref = [], []
        for _ in range(cfg.repeats):
            start = time.perf_counter()
            out = [torch_pipeline(b, cfg, n_init) for b in batches]
            sync(device)
            t_torch.append((time.perf_counter() - start) / cfg.images)
            with threadpool_limits(cfg.threads):
                start = time.perf_counter()
                ref = sklearn_pipeline(ref_problems, cfg, n_init)
                t_ref.append((time.perf_counter() - start) / cfg.reference_images)
        ms_torch, ms_ref = 1e3 * statistics.median(t_torch), 1e3 * statistics.median(t_ref)
        fit = out[0][0]
        n_ref = ref_problems.shape[0]
        torch_inertia = torch.cat([km.inertia.cpu() for _, km in out])[:n_ref].double()
        ratio = (torch_inertia / ref["inertia"].double()).numpy()
        results += [
            {"name": f"torch_batched_n_init{n_init}", "ms_per_image": ms_torch, "images_per_s": 1e3 / ms_torch},
            {"name": f"sklearn_per_problem_n_init{n_init}", "ms_per_image": ms_ref, "images_per_s": 1e3 / ms_ref},
        ]
        parity[f"n_init{n_init}"] = {
            "speedup_vs_sklearn": ms_ref / ms_torch,
            "inertia_ratio_median": float(np.median(ratio)),
            "inertia_ratio_max": float(ratio.max()),
        }
        echo(f"  n_init={n_init:<3} torch {ms_torch:9.2f} ms/image ({1e3 / ms_torch:7.2f} img/s)   "
             f"sklearn {ms_ref:9.2f} ms/image   speedup {ms_ref / ms_torch:5.2f}x   "
             f"inertia ratio median {np.median(ratio):.5f} max {ratio.max():.5f}")

    # PCA parity on the reference problems (the first batch covers them when batch >= reference)
    n_cmp = min(ref_problems.shape[0], fit.explained_variance_ratio.shape[0])
    ev_err = (fit.explained_variance_ratio[:n_cmp].cpu().double() - ref["explained_variance_ratio"][:n_cmp].double()).abs().max()
    agree = subspace_agreement(fit.components[:n_cmp].cpu().double(), ref["components"][:n_cmp].double()).min()
    # KMeans from shared initial centres: labels must agree exactly (ARI = 1)
    z = ref["projected"].float()
    init = z[:, : cfg.k].clone()
    mine = kmeans(z, cfg.k, init=init, max_iter=cfg.max_iter, tol=cfg.tol)
    with threadpool_limits(cfg.threads):
        theirs = SklearnBackend().kmeans(z, cfg.k, n_init=1, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed, init=init)
    from sklearn.metrics import adjusted_rand_score

    aris = [adjusted_rand_score(a, b) for a, b in zip(mine.labels.numpy(), theirs.labels.numpy(), strict=True)]
    echo(f"  parity: explained-variance-ratio max |diff| {float(ev_err):.2e}, subspace agreement min {float(agree):.6f}, "
         f"shared-init ARI min {min(aris):.6f}")

    head = parity[f"n_init{cfg.n_inits[0]}"]
    return {
        "bench": "kernels",
        "machine": machine_info(device),
        "device": str(device),
        "batch_size": cfg.batch_size,
        "config": asdict(cfg),
        "results": results,
        "speedup_vs_sklearn": head["speedup_vs_sklearn"],
        "inertia_ratio_median": head["inertia_ratio_median"],
        "per_n_init": parity,
        "parity": {
            "explained_variance_ratio_max_abs_diff": float(ev_err),
            "subspace_agreement_min": float(agree),
            "shared_init_ari_min": float(min(aris)),
        },
    }
