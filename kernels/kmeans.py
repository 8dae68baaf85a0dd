"""Batched KMeans (k-means++ init, Lloyd iterations) over a leading problem axis.

All P problems and all n_init restarts run in one set of tensor operations: the
restarts are laid side by side as n_init * k centres per problem, so the data tensor
(P, N, d) is never copied per restart. The algorithm follows scikit-learn's Lloyd
(greedy k-means++ with 2 + log(k) local trials, tolerance relative to the mean
feature variance, strict convergence when labels stop changing, empty clusters moved
to the points farthest from their centres, a final relabel) so that, started from the
same centres, both give the same labels.

Lloyd is written once, here; a backend supplies only the assignment step (the nearest
centre of every token, see `Assignment`): the torch default is one batched product, the faiss
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
from typing import NamedTuple, Protocol

import torch

from kernels.checks import check_finite


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


# ------------------------------------------------------------------ the assignment step (the seam)
#
# Lloyd below is written once. What a backend supplies is its assignment step: a callable
# (live, centres, workspace) -> (labels, d2) with centres (P', R, k, d) the packed restarts of
# the live problems, labels (P', R, N) int64 the nearest centre of every token and d2 (P', R, N)
# the squared distance to it. `torch_assignment` is the batched default; the faiss and cuML
# backends pass theirs (kernels/backends/). Everything else -- k-means++, the centroid update
# with scikit-learn's empty-cluster relocation, the stopping rule, the restarts and the choice
# of the best -- is this module's, for every backend.


class LiveProblems(NamedTuple):
    """The per-problem inputs of Lloyd, cut to the problems that still have a running restart (P' of P)."""

    x: torch.Tensor  # (P', N, d) centred tokens
    xt: torch.Tensor  # (P', d, N) the same, transposed
    x_sq: torch.Tensor  # (P', N) squared norms
    w: torch.Tensor  # (P', N) weights
    tol: torch.Tensor  # (P',) absolute tolerance on the centre shift

    def select(self, ids: torch.Tensor) -> LiveProblems:
        return LiveProblems(*(t[ids] for t in self))


class Workspace:
    """Reused buffers for the Lloyd loop, sized for all problems and restarts.

    On the CPU a fresh multi-MB tensor per iteration costs page faults comparable to the
    arithmetic itself; slicing views out of buffers allocated once avoids that.
    """

    def __init__(self, p: int, n_init: int, k: int, n: int, dtype: torch.dtype, device: torch.device):
        self.scores = torch.empty(p * n_init * k * n, dtype=dtype, device=device)
        self.onehot = torch.empty(p * n_init * k * n, dtype=dtype, device=device)
        self.values = torch.empty(p * n_init * n, dtype=dtype, device=device)
        self.labels = torch.empty(p * n_init * n, dtype=torch.long, device=device)

    def views(self, p: int, m: int, k: int, n: int):
        return (self.scores[: p * m * k * n].view(p, m * k, n), self.onehot[: p * m * k * n].view(p, m, k, n),
                self.values[: p * m * n].view(p, m, n), self.labels[: p * m * n].view(p, m, n))


class Assignment(Protocol):
    def __call__(self, live: LiveProblems, centres: torch.Tensor,
                 ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """centres (P', R, k, d) -> labels (P', R, N) int64 and squared distances to them (P', R, N)."""
        ...


def nearest(xt: torch.Tensor, centres: torch.Tensor, ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (P, n_init, N) and ||c||^2 - 2 x.c of the nearest centre (||x||^2 left out).

    The layout (P, n_init*k, N) keeps N innermost, so the min over k is a cheap elementwise pass.
    """
    p, n_init, k, d = centres.shape
    n = xt.shape[-1]
    c = centres.reshape(p, n_init * k, d)
    c_sq = (c * c).sum(-1)[:, :, None]  # (P, n_init*k, 1)
    if ws is None:
        partial = torch.baddbmm(c_sq, c, xt, alpha=-2.0).reshape(p, n_init, k, n)
        values, labels = partial.min(dim=2)
        return labels, values
    scores, _, values, labels = ws.views(p, n_init, k, n)
    torch.baddbmm(c_sq, c, xt, alpha=-2.0, out=scores)
    torch.min(scores.view(p, n_init, k, n), 2, out=(values, labels))
    return labels, values


def torch_assignment(live: LiveProblems, centres: torch.Tensor,
                     ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched assignment: one product for every problem and restart; ||x||^2 is added only
    after the argmin."""
    labels, partial = nearest(live.xt, centres, ws)
    return labels, (partial + live.x_sq[:, None, :]).clamp_(min=0)


def update_centres(
    x: torch.Tensor, w: torch.Tensor | None, labels: torch.Tensor, d2_nearest: torch.Tensor,
    old: torch.Tensor, k: int, ws: Workspace | None = None,
) -> torch.Tensor:
    """Weighted means of the assigned tokens, with scikit-learn's empty-cluster relocation.

    x (P, N, d); w (P, N) or None for unit weights; labels and d2_nearest (P, n_init, N) from
    the assignment; old centres (P, n_init, k, d) -> new centres (P, n_init, k, d).
    (Counting through an extra column of ones in the same matmul was tried: the
    33-wide product's float sums then depended on the batch size.)
    """
    p, n, d = x.shape
    n_init = labels.shape[1]
    if ws is None:
        onehot = torch.zeros(p, n_init, k, n, dtype=x.dtype, device=x.device)
    else:
        onehot = ws.views(p, n_init, k, n)[1].zero_()
    if w is None:
        onehot.scatter_(2, labels[:, :, None, :], 1.0)
    else:
        onehot.scatter_(2, labels[:, :, None, :], w[:, None, None, :].expand(p, n_init, 1, n).to(x.dtype))
    sums = (onehot.reshape(p, n_init * k, n) @ x).reshape(p, n_init, k, d)
    counts = onehot.sum(-1)  # (P, n_init, k) weight per cluster
    sums, counts = relocate_empty(x, w, labels, d2_nearest, sums, counts)
    safe = counts.clamp(min=torch.finfo(x.dtype).tiny)
    new = sums / safe[..., None]
    # a cluster that is still empty (all weights zero) keeps its old centre
    return torch.where((counts > 0)[..., None], new, old)


def relocate_empty(x: torch.Tensor, w: torch.Tensor | None, labels: torch.Tensor, d2_nearest: torch.Tensor,
                   sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's relocation: the j-th empty cluster of a restart takes the j-th farthest token
    from its own centre. sums (P, n_init, k, d), counts (P, n_init, k) -> the same, relocated.

    Branch-free (no host read of "any empty?"): with no empty cluster every term below adds
    exact zeros or keeps the old value, so the result is bitwise the same as skipping it.
    """
    p, n, d = x.shape
    n_init, k = counts.shape[1:]
    empty = counts <= 0
    w_full = torch.ones(p, n, dtype=x.dtype, device=x.device) if w is None else w.to(x.dtype)
    n_far = min(k, n)
    farthest = d2_nearest.topk(n_far, dim=-1).indices  # (P, n_init, n_far), farthest first
    rank = (torch.cumsum(empty.long(), dim=-1) - 1).clamp(min=0, max=n_far - 1)
    token = torch.gather(farthest, 2, rank)  # (P, n_init, k) token for each (empty) cluster
    problem = torch.arange(p, device=x.device)[:, None, None]
    moved = x[problem, token]  # (P, n_init, k, d)
    moved_w = torch.gather(w_full[:, None, :].expand(p, n_init, n), 2, token)  # (P, n_init, k)
    owner = torch.gather(labels, 2, token)  # cluster the token leaves
    is_empty = empty.to(x.dtype)
    # remove moved tokens from their old clusters, then seat them in the empty ones
    sums = sums.scatter_add(2, owner[..., None].expand(p, n_init, k, d), -(moved * (moved_w * is_empty)[..., None]))
    counts = counts.scatter_add(2, owner, -(moved_w * is_empty))
    sums = torch.where(empty[..., None], moved * moved_w[..., None], sums)
    counts = torch.where(empty, moved_w, counts)
    return sums, counts


# ------------------------------------------------------------------ Lloyd, written once


@dataclass
class LloydStats:
    """Per-iteration statistics of Lloyd (kmeans(..., stats=True)), held on the device (no host read).

    objective (T, P, R): weighted sum of squared distances of each restart's tokens to the centres
    they were assigned to at iteration t (the objective of the centres entering step t); shift
    (T, P, R): squared movement of the centres in step t; both NaN where the restart had stopped.
    running (T,): restarts still running after step t. R counts every restart of the call(s).
    """

    objective: torch.Tensor
    shift: torch.Tensor
    running: torch.Tensor

    @staticmethod
    def stack(steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> LloydStats:
        return LloydStats(*(torch.stack(parts) for parts in zip(*steps, strict=True)))

    def beside(self, other: LloydStats) -> LloydStats:
        """Two calls' statistics side by side on the restart axis (the shorter padded with NaN / 0)."""
        t = max(self.objective.shape[0], other.objective.shape[0])

        def pad(a: torch.Tensor, value: float) -> torch.Tensor:
            extra = a.new_full((t - a.shape[0], *a.shape[1:]), value)
            return torch.cat([a, extra])

        return LloydStats(torch.cat([pad(self.objective, math.nan), pad(other.objective, math.nan)], 2),
                          torch.cat([pad(self.shift, math.nan), pad(other.shift, math.nan)], 2),
                          pad(self.running, 0) + pad(other.running, 0))


SYNC_EVERY = 4  # Lloyd steps between the host's "is anything still running?" reads


def lloyd(
    problems: LiveProblems, centres: torch.Tensor, has_tokens: torch.Tensor, max_iter: int, *,
    unit_weights: bool = False, assign: Assignment = torch_assignment, sync_every: int = SYNC_EVERY,
    stats: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd iterations for every problem and restart until each restart converges.

    centres (P, n_init, k, d) are updated in place and returned with n_iter (P, n_init).
    Every `sync_every` steps the host reads which restarts still run and repacks: problems
    with none left are dropped (P' live problems); within each live problem the running
    restarts are packed to the front of a restart axis of width R = the most any live
    problem still runs, so one batched call covers (P', R) restarts. Between two reads a
    restart that converges is frozen on the device (its centres and n_iter stop changing,
    as if it had been dropped), so the results are those of a repack at every step; a
    packed slot that holds a finished restart is computed and its result dropped. The
    tokens are never copied per restart. stats: a list to append each step's
    (objective, shift, running) to (LloydStats), or None.
    """
    p, n_init, k, d = centres.shape
    dev = problems.x.device
    running = has_tokens[:, None].expand(p, n_init).clone()  # (P, n_init) restart still iterating
    n_iter = torch.zeros(p, n_init, dtype=torch.long, device=dev)
    workspace = Workspace(p, n_init, k, problems.x.shape[1], problems.x.dtype, dev)
    live, n_live = problems, p
    for it in range(max_iter):
        if it % sync_every == 0:  # the only host reads of the loop
            running_count = running.sum(1)  # (P,)
            live_ids = torch.nonzero(running_count > 0)[:, 0]  # (P',)
            if live_ids.numel() == 0:
                break
            width = int(running_count.max())  # R
            if live_ids.numel() != n_live:  # the live set only shrinks: same size, same problems
                n_live = live_ids.numel()
                live = problems.select(live_ids)
            # restart_ids[i, r]: the restart in packed slot r of live problem i, running ones first (stable order)
            restart_ids = torch.argsort((~running[live_ids]).to(torch.int8), dim=1, stable=True)[:, :width]  # (P', R)
            problem_ids = live_ids[:, None].expand_as(restart_ids)  # (P', R)
        active = running[problem_ids, restart_ids]  # (P', R) the slot holds a restart still running
        packed = centres[problem_ids, restart_ids]  # (P', R, k, d)
        labels, d2 = assign(live, packed, workspace)
        new = update_centres(live.x, None if unit_weights else live.w, labels, d2, packed, k, workspace)
        shift = ((new - packed) ** 2).sum((-1, -2))  # (P', R) squared centre movement
        # Unchanged labels give bitwise-unchanged centres (shift 0), so this one test
        # covers scikit-learn's strict convergence as well as its tolerance.
        converged = shift <= live.tol[:, None]
        centres[problem_ids, restart_ids] = torch.where(active[..., None, None], new, packed)
        n_iter[problem_ids, restart_ids] = torch.where(active, it + 1, n_iter[problem_ids, restart_ids])
        running[problem_ids, restart_ids] = active & ~converged
        if stats is not None:
            stats.append(step_stats((p, n_init), (problem_ids, restart_ids), active, (d2 * live.w[:, None, :]).sum(-1),
                                    shift, running))
    return n_iter, centres


def step_stats(shape: tuple[int, int], slots: tuple[torch.Tensor, torch.Tensor], active: torch.Tensor,
               objective: torch.Tensor, shift: torch.Tensor, running: torch.Tensor):
    """One step's (objective (P, R), shift (P, R), running ()) from its packed slots; NaN where not running."""
    out = []
    for packed in (objective, shift):
        full = torch.full(shape, math.nan, dtype=torch.float64, device=packed.device)
        full[slots] = torch.where(active, packed.double(), torch.full_like(packed, math.nan, dtype=torch.float64))
        out.append(full)
    return out[0], out[1], running.sum()


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
