"""The Lloyd loop and Hungarian as they were before issue 14 (a host read at every step), kept
as the reference the device-frozen versions in kernels/ must reproduce bit for bit."""

from __future__ import annotations

import torch

from kernels.lloyd import LiveProblems, Workspace, nearest


def update_centres_reference(
    x: torch.Tensor, w: torch.Tensor | None, labels: torch.Tensor, partial: torch.Tensor, x_sq: torch.Tensor,
    old: torch.Tensor, k: int, ws: Workspace | None = None,
) -> torch.Tensor:
    """Weighted means of the assigned tokens, with scikit-learn's empty-cluster relocation.

    x (P, N, d); w (P, N) or None for unit weights; labels and partial (P, n_init, N)
    from `nearest`; old centres (P, n_init, k, d) -> new centres (P, n_init, k, d).
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

    empty = counts <= 0
    if bool(empty.any()):
        w_full = torch.ones(p, n, dtype=x.dtype, device=x.device) if w is None else w.to(x.dtype)
        d2_nearest = (partial + x_sq[:, None, :]).clamp_(min=0)  # (P, n_init, N)
        # the j-th empty cluster takes the j-th farthest token from its own centre
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
    safe = counts.clamp(min=torch.finfo(x.dtype).tiny)
    new = sums / safe[..., None]
    # a cluster that is still empty (all weights zero) keeps its old centre
    return torch.where((counts > 0)[..., None], new, old)


def lloyd_reference(
    problems: LiveProblems, centres: torch.Tensor, has_tokens: torch.Tensor, max_iter: int, *,
    unit_weights: bool = False, **ignored,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd iterations for every problem and restart until each restart converges.

    centres (P, n_init, k, d) are updated in place and returned with n_iter (P, n_init).
    Each iteration works only on the restarts still running. Problems with none left are
    dropped (P' live problems); within each live problem the running restarts are packed
    to the front of a restart axis of width R = the most any live problem still runs, so
    one batched call covers (P', R) restarts; a packed slot beyond a problem's own count
    holds a finished restart, is computed and its result dropped. The tokens are never
    copied per restart.
    """
    assert ignored.get("stats") is None, "the reference keeps no statistics"
    xc, xt, x_sq, w, tol_abs = problems  # (the torch assignment step only: it calls nearest itself)
    p, n_init, k, d = centres.shape
    dev = xc.device
    running = has_tokens[:, None].expand(p, n_init).clone()  # (P, n_init) restart still iterating
    n_iter = torch.zeros(p, n_init, dtype=torch.long, device=dev)
    live_ids = torch.arange(p, device=dev)  # (P',) problems with a running restart
    workspace = Workspace(p, n_init, k, xc.shape[1], xc.dtype, dev)
    live = LiveProblems(xc, xt, x_sq, w, tol_abs)
    for it in range(max_iter):
        running_count = running[live_ids].sum(1)  # (P',) restarts still running per live problem
        if not bool((running_count > 0).all()):
            live_ids = live_ids[running_count > 0]
            if live_ids.numel() == 0:
                break
            live = LiveProblems(xc[live_ids], xt[live_ids], x_sq[live_ids], w[live_ids], tol_abs[live_ids])
            running_count = running_count[running_count > 0]
        width = int(running_count.max())  # R
        live_running = running[live_ids]  # (P', n_init)
        # restart_ids[i, r]: the restart in packed slot r of live problem i, running ones first (stable order)
        restart_ids = torch.argsort((~live_running).to(torch.int8), dim=1, stable=True)[:, :width]  # (P', R)
        slot_running = torch.gather(live_running, 1, restart_ids)  # (P', R) the slot holds a running restart
        problem_ids = live_ids[:, None]  # (P', 1)
        packed = centres[problem_ids, restart_ids]  # (P', R, k, d)
        labels, partial = nearest(live.xt, packed, workspace)
        new = update_centres_reference(live.x, None if unit_weights else live.w, labels, partial, live.x_sq, packed, k, workspace)
        shift = ((new - packed) ** 2).sum((-1, -2))  # (P', R) squared centre movement
        # Unchanged labels give bitwise-unchanged centres (shift 0), so this one test
        # covers scikit-learn's strict convergence as well as its tolerance.
        converged = shift <= live.tol[:, None]
        # write back the running slots only: (problem, restart) pairs, flat
        problem_of, restart_of = problem_ids.expand_as(restart_ids)[slot_running], restart_ids[slot_running]
        centres[problem_of, restart_of] = new[slot_running]
        n_iter[problem_of, restart_of] = it + 1
        running[problem_of, restart_of] = ~converged[slot_running]
    return n_iter, centres



def hungarian_square_reference(a: torch.Tensor) -> torch.Tensor:
    """Batched O(k^3) Hungarian on square (B, k, k) float64 costs -> column of each row."""
    b, k, _ = a.shape
    dev = a.device
    inf = torch.finfo(torch.float64).max
    bidx = torch.arange(b, device=dev)
    # 1-based arrays as in the classic formulation; index 0 is the virtual column/row
    u = torch.zeros(b, k + 1, dtype=torch.float64, device=dev)
    v = torch.zeros(b, k + 1, dtype=torch.float64, device=dev)
    p = torch.zeros(b, k + 1, dtype=torch.long, device=dev)  # p[j] = row matched to column j
    way = torch.zeros(b, k + 1, dtype=torch.long, device=dev)
    a1 = torch.zeros(b, k + 1, k + 1, dtype=torch.float64, device=dev)
    a1[:, 1:, 1:] = a
    for i in range(1, k + 1):
        p[:, 0] = i
        j0 = torch.zeros(b, dtype=torch.long, device=dev)
        minv = torch.full((b, k + 1), inf, dtype=torch.float64, device=dev)
        used = torch.zeros(b, k + 1, dtype=torch.bool, device=dev)
        running = torch.ones(b, dtype=torch.bool, device=dev)
        for _ in range(k + 1):
            used[bidx, j0] |= running
            i0 = p[bidx, j0]  # (B,)
            cur = a1[bidx, i0] - u[bidx, i0][:, None] - v  # (B, k+1)
            better = running[:, None] & ~used & (cur < minv)
            better[:, 0] = False
            minv = torch.where(better, cur, minv)
            way = torch.where(better, j0[:, None].expand(b, k + 1), way)
            free_minv = torch.where(used, torch.full_like(minv, inf), minv)
            free_minv[:, 0] = inf
            delta, j1 = free_minv.min(dim=1)
            delta = torch.where(running, delta, torch.zeros_like(delta))
            # potentials: rows of used columns gain delta, used columns lose it
            u.scatter_add_(1, p, torch.where(used, delta[:, None].expand(b, k + 1), torch.zeros_like(minv)))
            v = v - torch.where(used, delta[:, None].expand(b, k + 1), torch.zeros_like(v))
            minv = torch.where(running[:, None] & ~used, minv - delta[:, None], minv)
            j0 = torch.where(running, j1, j0)
            running = running & (p[bidx, j0] != 0)
            if not bool(running.any()):
                break
        # augment along the alternating path back to the virtual column 0
        for _ in range(k + 1):
            moving = j0 != 0
            if not bool(moving.any()):
                break
            j1 = way[bidx, j0]
            p[bidx, j0] = torch.where(moving, p[bidx, j1], p[bidx, j0])
            j0 = torch.where(moving, j1, j0)
    col_of_row = torch.zeros(b, k + 1, dtype=torch.long, device=dev)
    col_of_row.scatter_(1, p[:, 1:], torch.arange(1, k + 1, device=dev).expand(b, k))
    return col_of_row[:, 1:] - 1
