"""Lloyd's iterations for every problem and restart of a batch, written once for every backend.

kernels.kmeans prepares the problems (centring, k-means++ starts) and keeps the best restart;
this module iterates: assignment, centroid update with scikit-learn's empty-cluster relocation,
the stopping rule, host reads only every SYNC_EVERY steps, and per-iteration statistics on
request (LloydStats). A backend supplies only the assignment step (see Assignment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

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
