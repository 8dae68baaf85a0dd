"""Synthetic token maps with the structure of SAM3 features, for benchmarks and parity.

Each map is 72 x 72 tokens of C channels: a Voronoi-like class layout (5 classes),
a class mean per class, a few within-class directions whose coefficients vary
smoothly in space, and isotropic noise. `scope_problems` adds the DATR scopes of
the per-image workload (1 encoder + 1 global + 5 class re-encodings) so a benchmark
clusters exactly what the sweep clusters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.datr import attend_queries, datr_tokens


def token_maps(
    n_images: int, *, side: int = 72, channels: int = 256, classes: int = 5, seed: int = 0,
    noise: float = 0.6, dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return tokens (B, side*side, C) and the class map (B, side*side) int64."""
    gen = torch.Generator().manual_seed(seed)
    n = side * side
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    grid = torch.stack([yy, xx], -1).reshape(n, 2).float()
    sites = torch.rand(n_images, 12, 2, generator=gen) * side
    site_class = torch.randint(0, classes, (n_images, 12), generator=gen)
    nearest = torch.cdist(grid[None].expand(n_images, n, 2), sites).argmin(-1)  # (B, N)
    cls = torch.gather(site_class, 1, nearest)
    means = torch.randn(n_images, classes, channels, generator=gen) * 1.5
    dirs = torch.randn(n_images, classes, 3, channels, generator=gen)
    coef = torch.randn(n_images, 3, side, side, generator=gen)
    coef = F.avg_pool2d(coef, 9, stride=1, padding=4) * 3  # spatially smooth variation
    coef = coef.reshape(n_images, 3, n).transpose(1, 2)  # (B, N, 3)
    within = torch.einsum("bnr,bnrc->bnc", coef, dirs[torch.arange(n_images)[:, None], cls])
    tokens = means[torch.arange(n_images)[:, None], cls] + within
    tokens = tokens + noise * torch.randn(n_images, n, channels, generator=gen)
    return tokens.to(dtype), cls


def scope_problems(tokens: torch.Tensor, classes: torch.Tensor, *, alpha: float = 0.3, seed: int = 1) -> torch.Tensor:
    """The 7 token sets of the per-image workload: (B, N, C) -> (B * 7, N, C).

    Order per image: encoder tokens, global DATR, then one DATR per class. Queries are
    noisy class means with a random kept subset, attended as the sweep does.
    """
    b, n, c = tokens.shape
    k = int(classes.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    onehot = F.one_hot(classes, k).to(tokens.dtype)  # (B, N, k)
    class_means = (onehot.transpose(1, 2) @ tokens) / onehot.sum(1).clamp(min=1)[..., None]  # (B, k, C)
    q_per = 20
    queries = class_means[:, :, None, :] + 0.5 * torch.randn(b, k, q_per, c, generator=gen).to(tokens.dtype)
    kept = torch.rand(b, k, q_per, generator=gen) < 0.4
    attended_class = attend_queries(tokens, queries, kept)  # (B, k, N, C)
    attended_global = attend_queries(tokens, queries.reshape(b, 1, k * q_per, c), kept.reshape(b, 1, k * q_per))
    scopes = torch.cat([datr_tokens(tokens, attended_global, alpha), datr_tokens(tokens, attended_class, alpha)], 1)
    return torch.cat([tokens[:, None], scopes], 1).reshape(b * (k + 2), n, c)
