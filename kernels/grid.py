"""Label maps and masks moved between pixel, mask (288) and token (72) grids."""

from __future__ import annotations

import torch

IGNORE = 255


def cell_index(length: int, grid: int, device: torch.device) -> torch.Tensor:
    """Cell of each pixel along one axis: the cell its centre falls in, floor((y + 0.5) * grid / length)."""
    centres = (torch.arange(length, device=device, dtype=torch.float64) + 0.5) * grid / length
    return centres.floor().long().clamp_(max=grid - 1)


def class_counts(labels: torch.Tensor, grid: int, num_classes: int) -> torch.Tensor:
    """Pixels of each class per cell: (B, H, W) integer labels -> (B, num_classes, grid, grid) int64.

    Values outside [0, num_classes) (255 = ignore) are not counted. One bincount over a
    (image, cell, class) index per pixel.
    """
    assert labels.ndim == 3, f"labels must be (B, H, W), got {tuple(labels.shape)}"
    b, h, w = labels.shape
    dev = labels.device
    bins = b * grid * grid * num_classes
    itype = torch.int32 if bins < 2**31 - 1 else torch.int64
    cell = (cell_index(h, grid, dev)[:, None] * grid + cell_index(w, grid, dev)[None, :]).to(itype)  # (H, W)
    offset = (torch.arange(b, device=dev, dtype=itype) * (grid * grid))[:, None, None]
    lab = labels.to(itype)
    valid = (lab >= 0) & (lab < num_classes)
    index = torch.where(valid, (offset + cell) * num_classes + lab, bins)  # invalid pixels go to a spill bin
    counts = torch.bincount(index.reshape(-1), minlength=bins + 1)[:bins]
    return counts.reshape(b, grid, grid, num_classes).permute(0, 3, 1, 2)


def vote(counts: torch.Tensor, ignore: int = IGNORE) -> torch.Tensor:
    """Majority class per cell of (B, K, G, G) counts -> (B, G, G) uint8; ties to the smallest
    class, `ignore` where no pixel voted."""
    best = counts.argmax(dim=1)  # first maximum = smallest class on ties
    return torch.where(counts.sum(1) > 0, best, torch.full_like(best, ignore)).to(torch.uint8)


def majority_downsample(labels: torch.Tensor, grid: int, num_classes: int, ignore: int = IGNORE) -> torch.Tensor:
    """Downsample integer label maps to a grid x grid map by majority vote per cell.

    labels: (B, H, W) integer tensor, values in [0, num_classes) or `ignore`.
    A pixel belongs to the cell its centre falls in (cell = floor((y + 0.5) * grid / H)).
    Ignored pixels do not vote; ties go to the smallest class; a cell with no valid
    pixel is `ignore`. Returns (B, grid, grid) uint8.
    """
    return vote(class_counts(labels, grid, num_classes), ignore)


def coarsen_counts(counts: torch.Tensor, grid: int) -> torch.Tensor:
    """Counts on a fine grid (B, K, G, G) summed onto a coarser grid that divides G.

    Exact: with cell = floor((y + 0.5) * G / H), a pixel's coarse cell is its fine cell // (G / grid).
    """
    b, k, g, _ = counts.shape
    assert g % grid == 0, f"grid {grid} must divide {g}"
    f = g // grid
    return counts.reshape(b, k, grid, f, grid, f).sum((3, 5))


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
