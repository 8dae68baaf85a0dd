"""The controls of every flip ratio and the KMeans start of the DATR scopes (DESIGN.md, "Controls").

A flip ratio means little alone: KMeans on slightly moved tokens can land in another
local optimum. Two controls are measured on the same effective tokens and aligned to the
same encoder clustering L_enc as the flip ratio itself:

- null: the scope's DATR problem built the same way, with the rows of its attention
  weights P_s permuted across the image's tokens (F + alpha * P_s[perm] K_s): the same
  displacement sizes in the same subspace, no token-to-query correspondence. The
  permutation depends on (seed, image id, scope, tau) only and is shared by every alpha.
- reseed: the encoder tokens clustered again with seed + 1.

Problem axis of a batch with controls (B images, M slots per image, slot 0 = encoder):
the B * M real problems (image-major, as without controls), then B * (M - 1) null
problems (image-major; null problem j of an image belongs to its DATR slot j + 1).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import torch

from engine.core.config import AnalysisConfig
from engine.core.devices import kmeans_memory_budget
from kernels.backends import ClusterBackend
from kernels.kmeans import KMeansResult, kmeans_bytes_per_problem
from kernels.metrics import align_to_reference, flip_ratio, majority_filter

CONTROL_COLUMNS = ("flip_ratio_null", "flip_ratio_null_processed", "flip_ratio_reseed")


def real_then_null(x: torch.Tensor, b: int, m: int) -> torch.Tensor:
    """Per-problem rows of the factored layout (image-major, 2M - 1 slots per image with controls)
    in this module's layout (B*M real problems, then B*(M-1) nulls); x unchanged without controls."""
    if x.shape[0] == b * m:
        return x
    per_image = x.reshape(b, 2 * m - 1, *x.shape[1:])
    return torch.cat([per_image[:, :m].reshape(b * m, *x.shape[1:]), per_image[:, m:].reshape(b * (m - 1), *x.shape[1:])])


def kmeans_in_chunks(backend: ClusterBackend, z: torch.Tensor, k: int, cfg: AnalysisConfig, seed: int,
                     init: torch.Tensor | None = None) -> KMeansResult:
    """KMeans of every problem of z (P, N, d), in chunks of problems that keep its working memory
    within the device's budget. A problem's result does not depend on the others in its call
    (kernels/kmeans.py), so the chunks give what one call gives. init: (P, k, d) starting centres."""
    p, n, d = z.shape
    per_problem = kmeans_bytes_per_problem(n, d, k, cfg.n_init if init is None else 1, z.element_size())
    step = max(1, kmeans_memory_budget(z.device) // per_problem)
    parts = [backend.kmeans(z[lo : lo + step], k, n_init=cfg.n_init, max_iter=cfg.max_iter, tol=cfg.tol, seed=seed,
                            init=None if init is None else init[lo : lo + step])
             for lo in range(0, p, step)]
    if len(parts) == 1:
        return parts[0]
    return KMeansResult(*(torch.cat([getattr(r, f.name) for r in parts]) for f in fields(KMeansResult)))


def null_permutations(seed: int, image_ids: list[str], scopes: list[str], tau: float, n: int) -> torch.Tensor:
    """The null control's token permutation per (image, scope): (B, S, N) int64 on the CPU.

    Seeded from a hash of (seed, image id, scope, tau) alone, so an image's permutation does not
    depend on its batch, shard or alpha.
    """
    out = torch.empty(len(image_ids), len(scopes), n, dtype=torch.long)
    for i, image_id in enumerate(image_ids):
        for s, scope in enumerate(scopes):
            key = f"{int(seed)}\x00{image_id}\x00{scope}\x00{float(tau)!r}".encode()
            digest = hashlib.blake2b(key, digest_size=8).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
            out[i, s] = torch.randperm(n, generator=gen)
    return out


def encoder_partition_centres(z: torch.Tensor, encoder_labels: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each encoder cluster's tokens in every problem's own space.

    z (P, N, d) the problems' PCA coordinates, encoder_labels (P, N) the encoder labels of each
    problem's image -> (P, k, d). A cluster with no token (possible only in principle) starts at
    the origin of the PCA space, i.e. the problem's mean, and KMeans relocates it if it stays empty.
    """
    onehot = torch.nn.functional.one_hot(encoder_labels.long().clamp(min=0), k).to(z.dtype)  # (P, N, k)
    sums = onehot.transpose(1, 2) @ z  # (P, k, d)
    counts = onehot.sum(1)  # (P, k)
    return sums / counts.clamp(min=1)[..., None]


@dataclass
class GridClustering:
    """KMeans of every problem at one grid point (d, k), in the problem-axis order of the batch.

    labels (P, N), inertia (P,), n_iter (P,); reseed (B, N) the encoder tokens clustered with
    seed + 1 (None without controls).
    """

    labels: torch.Tensor
    inertia: torch.Tensor
    n_iter: torch.Tensor
    reseed: torch.Tensor | None


def owners(b: int, m: int, total: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image of every problem (P,) and the encoder problems' indices (B,), for the layout above."""
    real = torch.arange(b * m, device=device) // m
    null = torch.arange(total - b * m, device=device) // max(m - 1, 1)
    return torch.cat([real, null]), torch.arange(b, device=device) * m


def cluster_grid_point(z: torch.Tensor, b: int, m: int, k: int, cfg: AnalysisConfig,
                       backend: ClusterBackend) -> GridClustering:
    """KMeans of all problems z (P, N, d): one call with k-means++ (`independent`), or the encoder
    problems first and every DATR problem started from their partition (`encoder`, one run each).
    The reseed control clusters the encoder problems again with seed + 1 (k-means++)."""
    p = z.shape[0]
    owner, encoder_ids = owners(b, m, p, z.device)

    def run(x: torch.Tensor, seed: int, init: torch.Tensor | None = None):
        return kmeans_in_chunks(backend, x, k, cfg, seed, init)

    if cfg.kmeans_init == "independent":
        km = run(z, cfg.seed)
        labels, inertia, n_iter = km.labels, km.inertia, km.n_iter
        encoder_labels = labels[encoder_ids]
    else:
        z_enc = z[encoder_ids]
        km_enc = run(z_enc, cfg.seed)
        is_datr = torch.ones(p, dtype=torch.bool, device=z.device)
        is_datr[encoder_ids] = False
        datr_ids = is_datr.nonzero()[:, 0]
        z_datr = z[datr_ids]
        km = run(z_datr, cfg.seed, init=encoder_partition_centres(z_datr, km_enc.labels[owner[datr_ids]], k))
        labels = torch.empty(p, z.shape[1], dtype=km.labels.dtype, device=z.device)
        inertia = torch.empty(p, dtype=km.inertia.dtype, device=z.device)
        n_iter = torch.empty(p, dtype=km.n_iter.dtype, device=z.device)
        for out, enc, datr in ((labels, km_enc.labels, km.labels), (inertia, km_enc.inertia, km.inertia),
                               (n_iter, km_enc.n_iter, km.n_iter)):
            out[encoder_ids] = enc
            out[datr_ids] = datr
        encoder_labels = km_enc.labels
    reseed = None
    if cfg.controls:
        reseed = align_to_reference(run(z[encoder_ids], cfg.seed + 1).labels, encoder_labels, k)
    return GridClustering(labels=labels, inertia=inertia, n_iter=n_iter, reseed=reseed)


def control_columns(clustering: GridClustering, shape: tuple[int, int, int, int], k: int,
                    effective: torch.Tensor) -> dict[str, torch.Tensor]:
    """flip_ratio_null, flip_ratio_null_processed and flip_ratio_reseed per (image, slot): (B, M) float64.

    shape = (B, M, H, W); effective (B*M, N) the real slots' effective tokens. NaN where the
    slot has no effective token (the encoder slot always).
    """
    b, m, h, w = shape
    n = h * w
    labels = clustering.labels
    encoder = labels[: b * m].reshape(b, m, n)[:, 0]  # (B, N) L_enc
    null = labels[b * m:].reshape(b * (m - 1), n)
    eff_datr = effective.reshape(b, m, n)[:, 1:].reshape(-1, n)
    ref = encoder[:, None].expand(b, m - 1, n).reshape(-1, n)
    raw = flip_ratio(align_to_reference(null, ref, k), ref, eff_datr)
    null_f = majority_filter(null.reshape(-1, h, w), k).reshape(-1, n)
    encoder_f = majority_filter(encoder.reshape(b, h, w), k).reshape(b, 1, n).expand(b, m - 1, n).reshape(-1, n)
    processed = flip_ratio(align_to_reference(null_f, encoder_f, k), encoder_f, eff_datr)
    nan = torch.full((b, 1), float("nan"), dtype=torch.float64, device=labels.device)
    reseed = clustering.reseed[:, None].expand(b, m, n).reshape(-1, n)
    return {
        "flip_ratio_null": torch.cat([nan, raw.reshape(b, m - 1)], 1),
        "flip_ratio_null_processed": torch.cat([nan, processed.reshape(b, m - 1)], 1),
        "flip_ratio_reseed": flip_ratio(reseed, encoder[:, None].expand(b, m, n).reshape(-1, n), effective).reshape(b, m),
    }
