"""Label maps and masks moved between pixel, mask (288) and token (72) grids."""

from __future__ import annotations

import torch

IGNORE = 255


def majority_downsample(labels: torch.Tensor, grid: int, num_classes: int, ignore: int = IGNORE) -> torch.Tensor:
    """Downsample integer label maps to a grid x grid map by majority vote per cell.

    labels: (B, H, W) integer tensor, values in [0, num_classes) or `ignore`.
    A pixel belongs to the cell its centre falls in (cell = floor((y + 0.5) * grid / H)).
    Ignored pixels do not vote; ties go to the smallest class; a cell with no valid
    pixel is `ignore`. Returns (B, grid, grid) uint8.
    """
    assert labels.ndim == 3, f"labels must be (B, H, W), got {tuple(labels.shape)}"
    b, h, w = labels.shape
    dev = labels.device
    rows = ((torch.arange(h, device=dev, dtype=torch.float64) + 0.5) * grid / h).floor().long().clamp_(max=grid - 1)
    cols = ((torch.arange(w, device=dev, dtype=torch.float64) + 0.5) * grid / w).floor().long().clamp_(max=grid - 1)
    cell = (rows[:, None] * grid + cols[None, :]).reshape(-1)  # (H*W,)
    lab = labels.reshape(b, -1).long()
    valid = (lab != ignore) & (lab >= 0) & (lab < num_classes)
    # one flat index per (cell, class); invalid pixels go to a spill bucket that is dropped
    flat = torch.where(valid, cell[None, :] * num_classes + lab.clamp(0, num_classes - 1), grid * grid * num_classes)
    votes = torch.zeros(b, grid * grid * num_classes + 1, device=dev, dtype=torch.int32)
    votes.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.int32))
    votes = votes[:, :-1].reshape(b, grid * grid, num_classes)
    best = votes.argmax(dim=-1)  # first maximum = smallest class on ties
    out = torch.where(votes.sum(-1) > 0, best, torch.full_like(best, ignore))
    return out.reshape(b, grid, grid).to(torch.uint8)


def pool_to_tokens(mask_probs: torch.Tensor, grid: int = 72) -> torch.Tensor:
    """Average-pool (..., S, S) mask probabilities onto a (..., grid, grid) token grid.

    S must be a multiple of grid (288 -> 72 pools 4x4). Keeps the input dtype.
    """
    s = mask_probs.shape[-1]
    assert mask_probs.shape[-2] == s and s % grid == 0, f"mask side {tuple(mask_probs.shape[-2:])} not a multiple of {grid}"
    lead = mask_probs.shape[:-2]
    f = s // grid
    pooled = mask_probs.reshape(-1, 1, s, s).float()
    pooled = torch.nn.functional.avg_pool2d(pooled, kernel_size=f, stride=f)
    return pooled.reshape(*lead, grid, grid).to(mask_probs.dtype)
