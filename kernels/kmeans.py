"""Batched KMeans (k-means++ init, Lloyd iterations) over a leading problem axis.

All P problems and all n_init restarts run in one set of tensor operations: the
restarts are laid side by side as n_init * k centres per problem, so the data tensor
(P, N, d) is never copied per restart. The algorithm follows scikit-learn's Lloyd
(greedy k-means++ with 2 + log(k) local trials, tolerance relative to the mean
feature variance, strict convergence when labels stop changing, empty clusters moved
to the points farthest from their centres, a final relabel) so that, started from the
same centres, both give the same labels.

Lloyd is written once (kernels/lloyd.py); a backend supplies only the assignment step (the
nearest centre of every token, see `kernels.lloyd.Assignment`): the torch default is one batched product, the faiss
and cuML backends (kernels/backends/) search their own indexes. Per-iteration statistics
come back on request (`stats=True`, LloydStats), as in faiss's contrib/clustering.py.

Randomness: one CPU generator seeded with `seed` draws the uniforms for restart i,
and every problem uses the same draws. A problem's result therefore depends only on
its own data and the seed -- not on its position in the batch or the batch size --
and two problems with equal data get equal labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.checks import check_finite
from kernels.lloyd import SYNC_EVERY, Assignment, LiveProblems, LloydStats, lloyd, torch_assignment


@dataclass
class KMeansResult:
    """labels (P, N) int64 (-1 for a problem with no weighted token); centres (P, k, d);
    inertia (P,) weighted sum of squared distances; n_iter (P,) Lloyd iterations run
    by the restart that was kept; restart_labels (P, S, N) int64, the partition of each of
    the first S restarts (each restart is one single-start run: the seed ensemble), None
    unless asked for with keep_restarts = S; stats: per-iteration statistics (LloydStats) when
    asked for with stats=True."""

    labels: torch.Tensor
    centres: torch.Tensor
    inertia: torch.Tensor
    n_iter: torch.Tensor
    restart_labels: torch.Tensor | None = None
    stats: LloydStats | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> KMeansResult:
        """The result on another device, its real-valued fields in dtype (labels and counts stay int64)."""
        return KMeansResult(self.labels.to(device), self.centres.to(device, dtype), self.inertia.to(device, dtype),
                            self.n_iter.to(device), None if self.restart_labels is None else self.restart_labels.to(device),
                            self.stats)


def kmeans_bytes_per_problem(n: int, d: int, k: int, n_init: int, element_size: int = 4) -> int:
    """About how many bytes one problem of N tokens x d dims takes inside `kmeans` at its peak
    (Lloyd's workspace, the k-means++ candidate distances, the centred and transposed copies),
    for callers that split a large problem axis into chunks to bound memory."""
    n_local = 2 + int(math.log(k))
    per_token = n_init * (2 * k + 2 * n_local + 5) + 3 * d  # floats; int64 labels count as two
    return n * per_token * element_size


def squared_distances(x: torch.Tensor, centres: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||x - c||^2 for x (P, N, d), centres (P, M, d) -> (P, N, M), clamped at 0."""
    if x_sq is None:
        x_sq = (x * x).sum(-1)
    c_sq = (centres * centres).sum(-1)
    d2 = x_sq[:, :, None] - 2.0 * (x @ centres.transpose(1, 2)) + c_sq[:, None, :]
    return d2.clamp_(min=0)


def draw_uniforms(seed: int, n_init: int, k: int, n_local: int, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniforms in [0, 1) for the first centre (R,) and the trials (R, k-1, n_local), R = n_init + extra.

    The first n_init restarts draw exactly what they draw without extra restarts (the extra
    ones come after them from the same generator), so asking for more restarts never
    changes the first n_init.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    first = torch.rand(n_init, generator=gen, dtype=torch.float64)
    trials = torch.rand(n_init, max(k - 1, 0), n_local, generator=gen, dtype=torch.float64)
    if extra > 0:
        first = torch.cat([first, torch.rand(extra, generator=gen, dtype=torch.float64)])
        trials = torch.cat([trials, torch.rand(extra, max(k - 1, 0), n_local, generator=gen, dtype=torch.float64)])
    return first, trials


def sample_by_weight(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices drawn by inverse CDF: cdf (R, N) non-decreasing, u (R, m) in [0, 1) -> (R, m)."""
    target = u * cdf[:, -1:]
    idx = torch.searchsorted(cdf, target.contiguous(), right=True)
    return idx.clamp_(max=cdf.shape[1] - 1)


def kmeans_plusplus(
    x: torch.Tensor, w: torch.Tensor, k: int, n_init: int, seed: int, x_sq: torch.Tensor | None = None,
    restart_range: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Greedy k-means++ for every problem and restart: x (P, N, d), w (P, N) -> (P, R, k, d).

    restart_range (lo, hi): draw the starts of restarts lo..hi-1 of the seed's stream
    (default (0, n_init)); restart r draws the same uniforms whatever the range (draw_uniforms).
    """
    p, n, d = x.shape
    dt = x.dtype
    n_local = 2 + int(math.log(k))
    lo, hi = restart_range or (0, n_init)
    u_first, u_trials = draw_uniforms(seed, n_init, k, n_local, max(0, hi - n_init))
    u_first, u_trials = u_first[lo:hi], u_trials[lo:hi]
    n_init = hi - lo
    u_first = u_first.to(x.device)
    u_trials = u_trials.to(x.device)
    if x_sq is None:
        x_sq = (x * x).sum(-1)
    batch = torch.arange(p, device=x.device)[:, None]  # (P, 1)

    # first centre: weighted uniform draw, one per restart -> (P, n_init)
    cdf_w = torch.cumsum(w.double(), dim=1)
    first = sample_by_weight(cdf_w, u_first[None, :].expand(p, n_init))
    chosen = [first]
    closest = squared_distances(x, x[batch, first], x_sq).transpose(1, 2)  # (P, n_init, N)
    for c in range(1, k):
        pot_w = (closest * w[:, None, :]).double()  # (P, n_init, N)
        cdf = torch.cumsum(pot_w, dim=2).reshape(p * n_init, n)
        u = u_trials[:, c - 1, :][None].expand(p, n_init, n_local).reshape(p * n_init, n_local)
        cand = sample_by_weight(cdf, u).reshape(p, n_init * n_local)  # candidate token ids
        d_cand = squared_distances(x, x[batch, cand], x_sq)  # (P, N, n_init*n_local)
        d_cand = d_cand.transpose(1, 2).reshape(p, n_init, n_local, n)
        new_closest = torch.minimum(closest[:, :, None, :], d_cand)  # (P, n_init, n_local, N)
        pot = (new_closest * w[:, None, None, :]).sum(-1)  # (P, n_init, n_local)
        best = pot.argmin(dim=-1)  # (P, n_init)
        cand = cand.reshape(p, n_init, n_local)
        chosen.append(torch.gather(cand, 2, best[:, :, None])[:, :, 0])
        closest = torch.gather(new_closest, 2, best[:, :, None, None].expand(p, n_init, 1, n))[:, :, 0]
    ids = torch.stack(chosen, dim=2)  # (P, n_init, k)
    return x[batch[:, :, None], ids].to(dt)  # (P, n_init, k, d)


# ------------------------------------------------------------------ the common start and the entry point


@dataclass
class Prepared:
    """What every KMeans backend starts from (all on x's device and dtype).

    xc (P, N, d) the data centred on its weighted mean (P, d); x_sq (P, N) squared norms of
    xc; w (P, N) weights; has_tokens (P,) some weight > 0; tol_abs (P,) the tolerance
    scaled by the mean feature variance, as scikit-learn; centres (P, n_init, k, d)
    centred starting centres (given, or greedy k-means++).
    """

    xc: torch.Tensor
    x_sq: torch.Tensor
    w: torch.Tensor
    has_tokens: torch.Tensor
    mean: torch.Tensor
    tol_abs: torch.Tensor
    centres: torch.Tensor

    def problems(self) -> LiveProblems:
        """Every problem as Lloyd takes them (with the transposed copy of the tokens)."""
        return LiveProblems(self.xc, self.xc.transpose(1, 2).contiguous(), self.x_sq, self.w, self.tol_abs)


def prepare(
    x: torch.Tensor, k: int, *, n_init: int, max_iter: int, tol: float, seed: int,
    init: torch.Tensor | None, weights: torch.Tensor | None, restart_range: tuple[int, int] | None = None,
) -> Prepared:
    """Validate the arguments and build the common starting point of every backend.

    restart_range (lo, hi): the k-means++ restarts of the seed's stream to start from (default
    (0, n_init)); restarts past n_init are the seed ensemble's extra members."""
    assert x.ndim == 3, f"x must be (P, N, d), got {tuple(x.shape)}"
    p, n, d = x.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"k = {k} clusters is more than the {n} tokens per problem")
    if max_iter < 1 or n_init < 1 or tol < 0:
        raise ValueError(f"need max_iter >= 1, n_init >= 1, tol >= 0; got {max_iter}, {n_init}, {tol}")
    w = torch.ones(p, n, dtype=x.dtype, device=x.device) if weights is None else weights.to(x.dtype)
    assert w.shape == (p, n), f"weights must be (P, N) = {(p, n)}, got {tuple(w.shape)}"
    wsum = w.sum(1)
    has_tokens = wsum > 0
    # centre the data for accuracy, as scikit-learn does; centres are shifted back at the end
    mean = (w[:, :, None] * x).sum(1) / wsum.clamp(min=1e-30)[:, None]
    xc = x - mean[:, None, :]
    x_sq = (xc * xc).sum(-1)
    check_finite(x_sq, "KMeans input")
    var = (w[:, :, None] * xc * xc).sum(1) / wsum.clamp(min=1e-30)[:, None]
    if init is not None:
        centres = init.to(x.dtype)
        if centres.ndim == 3:
            centres = centres[:, None]
        assert centres.shape[0] == p and centres.shape[2:] == (k, d), f"init must be (P, [n_init,] k, d), got {tuple(init.shape)}"
        centres = centres - mean[:, None, None, :]
    else:
        centres = kmeans_plusplus(xc, w.clamp(min=0) * has_tokens[:, None], k, n_init, seed, x_sq, restart_range)
    return Prepared(xc, x_sq, w, has_tokens, mean, var.mean(-1) * tol, centres)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    init: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    keep_restarts: int = 0,
    assign: Assignment = torch_assignment,
    sync_every: int = SYNC_EVERY,
    stats: bool = False,
) -> KMeansResult:
    """Cluster every problem of x (P, N, d) into k clusters; keep the best restart each.

    init: optional starting centres (P, k, d) or (P, n_init, k, d); given centres skip
    k-means++ (n_init is then taken from init). weights: optional (P, N) non-negative
    sample weights or boolean token mask; zero-weight tokens do not move centres or
    count in the inertia but still get the label of their nearest centre.
    keep_restarts = S > 0 also returns the partitions of the first S restarts of the seed's
    stream (restart_labels, the seed ensemble). Restarts past n_init run in a second call, so
    the best of the first n_init -- `labels` and every other field -- is bitwise what it is
    without the ensemble. With init, the ensemble is the given starts (S <= their number).
    assign: the assignment step (torch_assignment; the faiss and cuML backends pass theirs).
    sync_every: Lloyd steps between the host's reads (any value gives the same results).
    stats: also return per-iteration statistics (KMeansResult.stats, LloydStats).
    Raises ValueError on NaN/inf input, k < 1, or k larger than N.
    """
    args = dict(max_iter=max_iter, tol=tol, seed=seed, weights=weights, assign=assign, sync_every=sync_every,
                stats=stats)
    best, members = _kmeans_call(x, k, n_init=n_init, init=init, restart_range=None, **args)
    if keep_restarts <= 0:
        return best
    if keep_restarts > members.shape[1]:
        assert init is None, f"keep_restarts = {keep_restarts} but init holds {members.shape[1]} starts"
        extra, more = _kmeans_call(x, k, n_init=n_init, init=None, restart_range=(n_init, keep_restarts), **args)
        members = torch.cat([members, more], 1)
        if stats:
            best.stats = best.stats.beside(extra.stats)
    best.restart_labels = members[:, :keep_restarts]
    return best


def _kmeans_call(x: torch.Tensor, k: int, *, n_init: int, max_iter: int, tol: float, seed: int,
                 init: torch.Tensor | None, weights: torch.Tensor | None, restart_range: tuple[int, int] | None,
                 assign: Assignment, sync_every: int, stats: bool) -> tuple[KMeansResult, torch.Tensor]:
    """One batched run of the given restarts: the best of them and every restart's labels (P, R, N)."""
    prep = prepare(x, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, init=init, weights=weights,
                   restart_range=restart_range)
    xc, w, has_tokens, mean = prep.xc, prep.w, prep.has_tokens, prep.mean
    p, n, d = xc.shape
    restarts = prep.centres.shape[1]
    problems = prep.problems()
    steps = [] if stats else None
    n_iter, centres = lloyd(problems, prep.centres, has_tokens, max_iter, unit_weights=weights is None, assign=assign,
                            sync_every=sync_every, stats=steps)
    labels, d2min = assign(problems, centres)
    pidx = torch.arange(p, device=x.device)
    if restarts > 1:
        best = (d2min * w[:, None, :]).sum(-1).argmin(dim=1)  # first minimum on ties
    else:
        best = torch.zeros(p, dtype=torch.long, device=x.device)
    out_labels = labels[pidx, best]
    best_centres = centres[pidx, best]  # (P, k, d)
    # the kept restart's inertia from exact differences (no norm-expansion cancellation)
    diff = xc - torch.gather(best_centres, 1, out_labels[:, :, None].expand(p, n, d))
    inertia = ((diff * diff).sum(-1) * w).sum(-1)
    out_labels = torch.where(has_tokens[:, None], out_labels, torch.full_like(out_labels, -1))
    members = torch.where(has_tokens[:, None, None], labels, torch.full_like(labels, -1))
    return KMeansResult(
        labels=out_labels,
        centres=best_centres + mean[:, None, :],
        inertia=torch.where(has_tokens, inertia, torch.zeros_like(inertia)),
        n_iter=torch.where(has_tokens, n_iter[pidx, best], torch.zeros_like(n_iter[:, 0])),
        stats=LloydStats.stack(steps) if stats and steps else (empty_stats(p, restarts, x.device) if stats else None),
    ), members


def empty_stats(p: int, restarts: int, device: torch.device) -> LloydStats:
    """The statistics of a call in which no restart ran (no problem had a weighted token)."""
    nan = torch.full((0, p, restarts), math.nan, dtype=torch.float64, device=device)
    return LloydStats(nan, nan.clone(), torch.zeros(0, dtype=torch.long, device=device))
