"""Query-conditioned token re-encoding (DATR) and the mask-weighted decision-aware tokens.

DATR_s(F)_j = F_j + alpha * A_j,  A_j = sum_{q in K_s} softmax_q(F_j . Q_q / sqrt(C)) Q_q

A is computed once per scope (one fused scaled_dot_product_attention call with a key
mask) and reused for every alpha. A scope with no kept query has A = 0 exactly, so
DATR_s(F) = F exactly and nothing is NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compact_kept(queries: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each scope's kept queries to the front and cut the padding.

    queries (B, S, Q, C), kept (B, S, Q) bool -> (B, S, K, C), key mask (B, S, K), with
    K = the largest kept count in the batch (at least 1). Attention over the kept set
    does not depend on query order, and K << Q makes the attention call cheap.
    """
    assert queries.shape[:3] == kept.shape, f"queries {tuple(queries.shape)} vs kept {tuple(kept.shape)}"
    order = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True)  # kept first, original order
    n_keep = max(int(kept.sum(-1).max()), 1)
    order = order[..., :n_keep]
    q = torch.gather(queries, 2, order[..., None].expand(*order.shape, queries.shape[-1]))
    return q, torch.gather(kept, 2, order)


def attend_queries(tokens: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Attended query vector A for every token and scope.

    tokens (B, N, C); keys (B, S, K, C) the queries of each scope; key_mask (B, S, K)
    bool, True = kept. Returns (B, S, N, C) in the tokens' dtype; zeros for a scope
    with no kept key.
    """
    b, n, c = tokens.shape
    assert keys.shape[0] == b and keys.shape[-1] == c, f"keys must be (B, S, K, {c}), got {tuple(keys.shape)}"
    s = keys.shape[1]
    any_kept = key_mask.any(-1)  # (B, S)
    # give empty scopes a full mask so no row is all -inf; their output is zeroed below
    mask = key_mask | ~any_kept[..., None]
    q = tokens[:, None].expand(b, s, n, c)
    out = F.scaled_dot_product_attention(q, keys.to(tokens.dtype), keys.to(tokens.dtype), attn_mask=mask[:, :, None, :])
    return out * any_kept[:, :, None, None].to(out.dtype)


def datr_tokens(tokens: torch.Tensor, attended: torch.Tensor, alpha: float) -> torch.Tensor:
    """DATR_s(F) = F + alpha * A: tokens (B, N, C), attended (B, S, N, C) -> (B, S, N, C)."""
    return tokens[:, None] + alpha * attended


def decision_aware_tokens(tokens: torch.Tensor, mask_weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """D = F + alpha * (F * W): tokens (B, N, C), mask_weights (B, S, N) -> (B, S, N, C).

    Each token is only rescaled by (1 + alpha * W_j), so no cosine measure can move.
    """
    return tokens[:, None] * (1.0 + alpha * mask_weights[..., None].to(tokens.dtype))


def mask_weights(query_masks: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """W(j) = max over kept queries of the pooled mask probability; 0 with no kept query.

    query_masks (B, P, Q, N) or (B, P, Q, H, W) probabilities; kept (B, P, Q) bool
    -> (B, P, N) float32.
    """
    qm = query_masks.reshape(*query_masks.shape[:3], -1).float()
    return torch.where(kept[..., None], qm, torch.zeros_like(qm)).amax(dim=2)
