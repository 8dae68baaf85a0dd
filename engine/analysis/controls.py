"""KMeans of a part's problems, the flip-ratio controls and the KMeans start of the DATR scopes
(README "Controls" and "Effects"; docs/DESIGN.md).

A flip ratio means little alone: KMeans on slightly moved tokens can land in another local
optimum. Its single-draw controls, measured on the same effective tokens and aligned to the same
encoder clustering L_enc as the flip ratio itself:

- null: the scope's DATR problem built the same way, with the rows of its attention weights P_s
  permuted across the image's tokens (F + alpha * P_s[perm] K_s): the same displacement sizes in
  the same subspace, no token-to-query correspondence. The permutation depends on (seed, image
  id, scope, tau) only, is shared by every alpha and is drawn on the batch's device.
- reseed: the encoder tokens clustered again with seed + 1 (independent starts only).

The seed ensemble (engine.analysis.ensemble) comes from the same KMeans calls: every problem keeps
the partitions of its first S restarts. Which problem is which comes from engine.analysis.layout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from engine.analysis.layout import PartIndex
from engine.core.config import AnalysisConfig
from engine.core.devices import kmeans_memory_budget
from kernels.backends import ClusterBackend
from kernels.kmeans import KMeansResult, kmeans_bytes_per_problem
from kernels.metrics import align_to_reference, flip_ratio, majority_filter

MEMBER_DTYPE = torch.int8  # ensemble partitions are held compactly: labels < k <= 64, -1 = no token


def kmeans_in_chunks(backend: ClusterBackend, z: torch.Tensor, k: int, cfg: AnalysisConfig, seed: int,
                     init: torch.Tensor | None = None, keep_restarts: int = 0, tol: float | None = None) -> KMeansResult:
    """KMeans of every problem of z (P, N, d), in chunks of problems that keep its working memory
    within the device's budget. A problem's result does not depend on the others in its call
    (kernels/kmeans.py), so the chunks give what one call gives. init: (P, [R,] k, d) starting
    centres; keep_restarts: the seed ensemble's size (restart_labels come back as int8)."""
    p, n, d = z.shape
    restarts = max(cfg.n_init, keep_restarts) if init is None else (1 if init.ndim == 3 else init.shape[1])
    per_problem = kmeans_bytes_per_problem(n, d, k, restarts, z.element_size())
    step = max(1, kmeans_memory_budget(z.device) // per_problem)
    parts = []
    for lo in range(0, p, step):
        part = backend.kmeans(z[lo : lo + step], k, n_init=cfg.n_init, max_iter=cfg.max_iter,
                              tol=cfg.tol if tol is None else tol, seed=seed,
                              init=None if init is None else init[lo : lo + step], keep_restarts=keep_restarts)
        if part.restart_labels is not None:
            part.restart_labels = part.restart_labels.to(MEMBER_DTYPE)
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    members = None if keep_restarts == 0 else torch.cat([r.restart_labels for r in parts])
    return KMeansResult(*(torch.cat([getattr(r, name) for r in parts]) for name in ("labels", "centres", "inertia", "n_iter")),
                        restart_labels=members)


def permutation_keys(seed: int, image_ids: list[str], scopes: tuple[str, ...] | list[str], tau: float) -> list[int]:
    """One 62-bit key per (image, scope), from a hash of (seed, image id, scope, tau) alone."""
    keys = []
    for image_id in image_ids:
        for scope in scopes:
            text = f"{int(seed)}\x00{image_id}\x00{scope}\x00{float(tau)!r}".encode()
            keys.append(int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**62 - 1))
    return keys


MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2^32 for int64 x in [0, 2^32), without int64 overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * m + ((hi * (m & 0xFFFF)) << 16)) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply, as in hash tables): int64 in [0, 2^32) -> same range."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def null_permutations(seed: int, image_ids: list[str], scopes: tuple[str, ...] | list[str], tau: float, n: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The null control's token permutation per (image, scope): (B, S, N) int64 on `device`.

    Each (image, scope) has a key from a hash of (seed, image id, scope, tau) alone, so its
    permutation does not depend on the batch, shard, alpha or device. Token j gets a 63-bit
    pseudo-random priority from integer hashes of (key, j), computed on the device; the
    permutation sorts the tokens by it (stable: a tie keeps token order).
    """
    keys = torch.tensor(permutation_keys(seed, image_ids, scopes, tau), dtype=torch.long)  # one host-to-device copy
    keys = keys.to(device).reshape(len(image_ids), len(scopes), 1)
    token = torch.arange(n, device=device, dtype=torch.long)
    k_lo, k_hi = keys & MASK32, (keys >> 32) & MASK32
    first = _mix32(_mix32(token ^ k_lo) ^ k_hi)
    second = _mix32(_mix32(first ^ k_hi ^ 0x9E3779B9) ^ k_lo)
    priority = ((first & 0x7FFFFFFF) << 32) | second  # (B, S, N), < 2^63
    return torch.argsort(priority, dim=-1, stable=True)


def encoder_partition_centres(z: torch.Tensor, encoder_labels: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each encoder cluster's tokens in every problem's own space.

    z (P, N, d) the problems' PCA coordinates, encoder_labels (P, [R,] N) the encoder labels of
    each problem's image (R partitions: one start each) -> (P, [R,] k, d). A cluster with no token
    (possible only in principle) starts at the origin of the PCA space, i.e. the problem's mean,
    and KMeans relocates it if it stays empty.
    """
    onehot = torch.nn.functional.one_hot(encoder_labels.long().clamp(min=0), k).to(z.dtype)  # (P, [R,] N, k)
    if encoder_labels.ndim == 3:
        sums = onehot.transpose(-1, -2) @ z[:, None]  # (P, R, k, d)
    else:
        sums = onehot.transpose(1, 2) @ z  # (P, k, d)
    counts = onehot.sum(-2)  # (P, [R,] k)
    return sums / counts.clamp(min=1)[..., None]


@dataclass
class EncoderClustering:
    """The encoder problems' KMeans at one grid point (d, k), kept for every part of the batch.

    labels (B, N) L_enc; filtered (B, N) L_enc after one 3x3 plurality filter (the reference of
    every processed flip ratio); members (B, S, N) int8 the seed ensemble (None with --seeds 0);
    reseed (B, N) the encoder clustered with seed + 1, aligned to L_enc (None without controls or
    with encoder starts).
    """

    labels: torch.Tensor
    filtered: torch.Tensor
    members: torch.Tensor | None
    reseed: torch.Tensor | None


@dataclass
class PartClustering:
    """KMeans of every problem of a part at one grid point, in the part's problem order.

    labels (P, N), inertia (P,), n_iter (P,): the reported (paper's) clustering; members (P, S, N)
    int8 the seed ensemble (None with --seeds 0).
    """

    labels: torch.Tensor
    inertia: torch.Tensor
    n_iter: torch.Tensor
    members: torch.Tensor | None


def encoder_fixed_points(z: torch.Tensor, k: int, cfg: AnalysisConfig, backend: ClusterBackend) -> KMeansResult:
    """`--kmeans-init encoder`: the encoder problems z (B, N, d), best of n_init with the ensemble's S
    restarts, every restart run until no label changes (tol 0): each partition is a Lloyd fixed point,
    so a DATR problem whose tokens equal F, started from it, flips nothing."""
    return kmeans_in_chunks(backend, z, k, cfg, cfg.seed, keep_restarts=cfg.seeds, tol=0.0)


def reseed_labels(z: torch.Tensor, labels: torch.Tensor, k: int, cfg: AnalysisConfig, backend: ClusterBackend) -> torch.Tensor:
    """The reseed control: the encoder problems z (B, N, d) clustered with seed + 1, aligned to L_enc (B, N)."""
    return align_to_reference(kmeans_in_chunks(backend, z, k, cfg, cfg.seed + 1).labels, labels, k)


def cluster_part(z: torch.Tensor, index: PartIndex, encoder: EncoderClustering | KMeansResult, k: int,
                 cfg: AnalysisConfig, backend: ClusterBackend) -> PartClustering:
    """KMeans of a part's problems z (P, N, d). `independent`: one call for every problem (its encoder
    problems included, in part 0). `encoder`: every DATR and null problem starts from the encoder's
    partitions in its own PCA space -- the reported run from L_enc, member s from the encoder's
    member s (a paired design); the part's encoder problems are given as `encoder` (a KMeansResult)."""
    if cfg.kmeans_init == "independent":
        km = kmeans_in_chunks(backend, z, k, cfg, cfg.seed, keep_restarts=cfg.seeds)
        return PartClustering(km.labels, km.inertia, km.n_iter, km.restart_labels)
    enc_labels = encoder.labels
    enc_members = encoder.members if isinstance(encoder, EncoderClustering) else encoder.restart_labels
    image = index.image_of[index.datr]
    z_datr = z[index.datr]
    run = kmeans_in_chunks(backend, z_datr, k, cfg, cfg.seed, init=encoder_partition_centres(z_datr, enc_labels[image], k))
    members = None
    if cfg.seeds:
        starts = encoder_partition_centres(z_datr, enc_members[image], k)  # (P', S, k, d)
        members = kmeans_in_chunks(backend, z_datr, k, cfg, cfg.seed, init=starts, keep_restarts=cfg.seeds).restart_labels
    p, n = z.shape[:2]
    out = PartClustering(torch.empty(p, n, dtype=run.labels.dtype, device=z.device),
                         torch.empty(p, dtype=run.inertia.dtype, device=z.device),
                         torch.empty(p, dtype=run.n_iter.dtype, device=z.device),
                         None if members is None else torch.empty(p, cfg.seeds, n, dtype=MEMBER_DTYPE, device=z.device))
    fields = (("labels", run.labels, encoder.labels), ("inertia", run.inertia, encoder.inertia),
              ("n_iter", run.n_iter, encoder.n_iter), ("members", members, enc_members))
    for name, datr, enc in fields:
        if datr is None:
            continue
        getattr(out, name)[index.datr] = datr
        if index.encoder is not None:
            getattr(out, name)[index.encoder] = enc
    return out


def control_columns(null_labels: torch.Tensor, encoder: EncoderClustering, effective: torch.Tensor, k: int,
                    grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """flip_ratio_null, flip_ratio_null_processed and flip_ratio_reseed per (image, DATR slot): (B, J) float64.

    null_labels (B, J, N) the null problems' labels; effective (B, J, N); grid = (H, W). NaN where
    the slot has no effective token; reseed NaN where it was not clustered.
    """
    b, j, n = null_labels.shape
    h, w = grid
    ref = encoder.labels[:, None].expand(b, j, n).reshape(-1, n)
    eff = effective.reshape(-1, n)
    null = null_labels.reshape(-1, n)
    raw = flip_ratio(align_to_reference(null, ref, k), ref, eff)
    null_f = majority_filter(null.reshape(-1, h, w), k).reshape(-1, n)
    enc_f = encoder.filtered[:, None].expand(b, j, n).reshape(-1, n)
    processed = flip_ratio(align_to_reference(null_f, enc_f, k), enc_f, eff)
    out = {"flip_ratio_null": raw.reshape(b, j), "flip_ratio_null_processed": processed.reshape(b, j)}
    if encoder.reseed is not None:
        reseed = encoder.reseed[:, None].expand(b, j, n).reshape(-1, n)
        out["flip_ratio_reseed"] = flip_ratio(reseed, ref, eff).reshape(b, j)
    return out
