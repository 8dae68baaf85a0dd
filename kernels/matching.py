"""Batched optimal assignment (Hungarian / Kuhn-Munkres with potentials).

The loops run over rows and augmenting steps (at most k each), never over problems:
every step updates all B problems at once, with finished problems frozen by masks. A
step on a frozen problem changes nothing (its delta is 0 and every write is masked), so
the loops need not ask the host whether a problem is still searching: row i (1-based)
finds a free column within i steps (only i - 1 columns are matched), and its augmenting
path has at most as many steps as its search. The loops therefore run those bounds with
no host read; only where a bound leaves at least CHECK_EVERY steps to skip (k > 2 *
CHECK_EVERY - 1) does the host ask, every CHECK_EVERY steps, whether it may stop early.
For k <= 7 a call makes no host read at all.
"""

from __future__ import annotations

import torch

CHECK_EVERY = 4  # steps between the host's reads of "still running?" (where a read can skip that many)


def worth_a_read(step: int, bound: int) -> bool:
    """Read "still running?" after `step` only every CHECK_EVERY steps, and only where at least
    CHECK_EVERY of the loop's `bound` steps remain to be skipped."""
    return step % CHECK_EVERY == CHECK_EVERY - 1 and bound - 1 - step >= CHECK_EVERY


def linear_sum_assignment(cost: torch.Tensor, maximize: bool = False) -> torch.Tensor:
    """Minimum-cost (or maximum) one-to-one assignment for each of B cost matrices.

    cost: (B, n, m) real. Returns (B, n) int64: the column given to each row, or -1
    for rows left unmatched when n > m. Same optimum as scipy.optimize.linear_sum_assignment
    (the chosen pairs can differ only where several assignments tie).
    """
    assert cost.ndim == 3, f"cost must be (B, n, m), got {tuple(cost.shape)}"
    b, n, m = cost.shape
    if n == 0 or m == 0:
        return torch.full((b, n), -1, dtype=torch.long, device=cost.device)
    size = max(n, m)
    a = cost.double()
    if maximize:
        a = -a
    if n != m:  # pad to square with zero cost; padded pairs are dropped at the end
        padded = torch.zeros(b, size, size, dtype=torch.float64, device=cost.device)
        padded[:, :n, :m] = a
        a = padded
    col_of_row = _hungarian_square(a)
    return torch.where(col_of_row < m, col_of_row, torch.full_like(col_of_row, -1))[:, :n]


def _hungarian_square(a: torch.Tensor) -> torch.Tensor:
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
        for step in range(i):  # row i reaches a free column within i steps
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
            if worth_a_read(step, i) and not bool(running.any()):
                break
        # augment along the alternating path back to the virtual column 0 (no longer than the search)
        for step in range(i):
            moving = j0 != 0
            j1 = way[bidx, j0]
            p[bidx, j0] = torch.where(moving, p[bidx, j1], p[bidx, j0])
            j0 = torch.where(moving, j1, j0)
            if worth_a_read(step, i) and not bool((j0 != 0).any()):
                break
    col_of_row = torch.zeros(b, k + 1, dtype=torch.long, device=dev)
    col_of_row.scatter_(1, p[:, 1:], torch.arange(1, k + 1, device=dev).expand(b, k))
    return col_of_row[:, 1:] - 1
