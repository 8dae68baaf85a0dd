"""What a feature source (SAM3, the simulated stand-in or the feature cache) hands to the analysis.

Every source returns a `SourceBatch` for a batch of B images and P prompts; everything
downstream (DATR, clustering, metrics, cache) reads only this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class SourceBatch:
    """Decoder and encoder outputs for B images x P prompts, all on one device.

    features:     (B, C, 72, 72) float32 -- encoder `vision_features` (C = 256)
    queries:      (B, P, Q, C) float32   -- decoder last-layer query states (Q = 200)
    scores:       (B, P, Q) float32      -- sigmoid(pred_logits) * sigmoid(presence)
    query_masks:  (B, P, Q, 72, 72) float16 -- each query's mask probability, the
                  288x288 map average-pooled 4x4 onto the token grid
    union_masks:  (B, T, P, 288, 288) bool -- union over queries with score >= taus[t]
                  of (mask probability >= 0.5); T = len(taus)
    taus:         the score thresholds union_masks was built for
    mask_probs:   (B, P, Q, 288, 288) float16 or None -- full-res probabilities, only
                  when a figure asked for them
    """

    image_ids: list[str]
    features: torch.Tensor
    queries: torch.Tensor
    scores: torch.Tensor
    query_masks: torch.Tensor
    union_masks: torch.Tensor
    taus: tuple[float, ...]
    mask_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        b = len(self.image_ids)
        assert self.features.ndim == 4 and self.features.shape[0] == b, f"features: got {tuple(self.features.shape)}"
        assert self.queries.ndim == 4 and self.queries.shape[0] == b, f"queries: got {tuple(self.queries.shape)}"
        p, q = self.queries.shape[1:3]
        assert self.scores.shape == (b, p, q), f"scores: got {tuple(self.scores.shape)}"
        assert self.query_masks.shape[:3] == (b, p, q), f"query_masks: got {tuple(self.query_masks.shape)}"
        assert self.union_masks.shape[:3] == (b, len(self.taus), p), f"union_masks: got {tuple(self.union_masks.shape)}"


class FeatureSource(Protocol):
    """A model (real or simulated) that turns a batch of images into a SourceBatch."""

    name: str  # "sam3" or "simulated"
    prompts: tuple[str, ...]
    device: torch.device

    def run_batch(
        self,
        images: torch.Tensor,  # (B, 3, 1008, 1008) uint8, on any device
        image_ids: list[str],
        taus: tuple[float, ...],
        gt_mask: torch.Tensor | None = None,  # (B, 288, 288) uint8 class ids, 255 = ignore
        gt_tokens: torch.Tensor | None = None,  # (B, 72, 72) uint8 class ids, 255 = ignore
        keep_mask_probs: bool = False,
    ) -> SourceBatch:
        """The real model ignores the GT; the simulated one needs it (DataError without)."""
        ...

    def describe(self) -> dict:
        """What to record in run.json about this source (model, checkpoint, simulated or not)."""
        ...
