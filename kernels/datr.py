"""Query-conditioned token re-encoding (DATR) and the mask-weighted decision-aware tokens.

DATR_s(F)_j = F_j + alpha * A_j,  A_j = sum_{q in K_s} softmax_q(F_j . Q_q / sqrt(C)) Q_q

A is computed once per scope (batched over images and scopes, streamed over fixed
chunks of kept queries) and reused for every alpha. A scope with no kept query has A = 0 exactly, so
DATR_s(F) = F exactly and nothing is NaN.
"""

from __future__ import annotations

import math

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


KEY_CHUNK = 16


def attend_queries(tokens: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor, chunk: int = KEY_CHUNK) -> torch.Tensor:
    """Attended query vector A for every token and scope.

    tokens (B, N, C); keys (B, S, K, C) the queries of each scope; key_mask (B, S, K)
    bool, True = kept. Returns (B, S, N, C) in the tokens' dtype; exactly zero for a
    scope with no kept key.

    The softmax runs over fixed chunks of `chunk` keys with an online (running max)
    accumulation. A chunk that holds only masked padding is an exact no-op, so an
    image's result depends only on its own kept queries -- not on how many keys the
    other images of its batch padded it to. That keeps rows bitwise identical for any
    batch size, shard or worker count.
    """
    b, n, c = tokens.shape
    assert keys.shape[0] == b and keys.shape[-1] == c, f"keys must be (B, S, K, {c}), got {tuple(keys.shape)}"
    s, k = keys.shape[1], keys.shape[2]
    keys = keys.to(tokens.dtype)
    scale = 1.0 / math.sqrt(c)
    dt, dev = tokens.dtype, tokens.device
    running_max = torch.full((b, s, n, 1), float("-inf"), dtype=dt, device=dev)
    norm = torch.zeros(b, s, n, 1, dtype=dt, device=dev)
    acc = None
    for lo in range(0, k, chunk):
        kc = keys[:, :, lo : lo + chunk]
        mc = key_mask[:, :, None, lo : lo + chunk]  # (B, S, 1, kc)
        if kc.shape[2] < chunk:  # pad the last chunk so every chunk has the same shape
            pad = chunk - kc.shape[2]
            kc = F.pad(kc, (0, 0, 0, pad))
            mc = F.pad(mc, (0, pad), value=False)
        # logits for every scope from one matmul over the tokens: (B, N, C) @ (B, C, S*chunk)
        logits = (tokens @ kc.reshape(b, s * chunk, c).transpose(1, 2)).reshape(b, n, s, chunk).transpose(1, 2)
        logits = (logits * scale).masked_fill_(~mc, float("-inf"))  # (B, S, N, chunk)
        new_max = torch.maximum(running_max, logits.amax(-1, keepdim=True))
        finite = torch.isfinite(new_max)
        weights = torch.exp(logits - torch.where(finite, new_max, torch.zeros_like(new_max)))  # masked -> exp(-inf) = 0
        if acc is None:
            norm = weights.sum(-1, keepdim=True)
            acc = weights @ kc  # (B, S, N, C)
        else:
            rescale = torch.where(finite, torch.exp(running_max - new_max), torch.ones_like(new_max))
            norm = norm * rescale + weights.sum(-1, keepdim=True)
            acc = torch.baddbmm((acc * rescale).reshape(b * s, n, c), weights.reshape(b * s, n, chunk),
                                kc.reshape(b * s, chunk, c)).reshape(b, s, n, c)
        running_max = new_max
    if acc is None:
        return torch.zeros(b, s, n, c, dtype=dt, device=dev)
    # a scope with no kept key has acc == 0 exactly, and 0 / tiny stays 0
    return acc.div_(norm.clamp(min=torch.finfo(dt).tiny))


def datr_tokens(tokens: torch.Tensor, attended: torch.Tensor, alpha: float) -> torch.Tensor:
    """DATR_s(F) = F + alpha * A: tokens (B, N, C), attended (B, S, N, C) -> (B, S, N, C)."""
    return tokens[:, None] + alpha * attended


def permute_token_rows(attended: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The attended vectors with their token rows permuted: out[b, s, j] = attended[b, s, perm[b, s, j]].

    attended (B, S, N, C) = P_s K_s (P_s the (N, K) softmax weights, one row per token),
    perm (B, S, N) int64 -> (B, S, N, C) = P_s[perm] K_s: the scope's displacement sizes
    and subspace, with the token-to-query correspondence destroyed (the null control).
    """
    assert perm.shape == attended.shape[:3], f"perm must be (B, S, N) = {tuple(attended.shape[:3])}, got {tuple(perm.shape)}"
    index = perm.to(attended.device)[..., None].expand(attended.shape)
    return torch.gather(attended, 2, index)


def decision_aware_tokens(tokens: torch.Tensor, mask_weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """D = F + alpha * (F * W): tokens (B, N, C), mask_weights (B, S, N) -> (B, S, N, C).

    Each token is only rescaled by (1 + alpha * W_j), so no cosine measure can move.
    """
    return tokens[:, None] * (1.0 + alpha * mask_weights[..., None].to(tokens.dtype))


def mask_weights(query_masks: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """W(j) = max over kept queries of the pooled mask probability; 0 with no kept query.

    query_masks (B, P, Q, N) or (B, P, Q, H, W) probabilities; kept (B, P, Q) bool
    -> (B, P, N) float32. Only the kept queries' maps are read (moved to the front first).
    """
    qm = query_masks.reshape(*query_masks.shape[:3], -1)
    order = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True)[..., : max(int(kept.sum(-1).max()), 1)]
    maps = torch.gather(qm, 2, order[..., None].expand(*order.shape, qm.shape[-1])).float()  # (B, P, K, N)
    keep = torch.gather(kept, 2, order)[..., None]
    return torch.where(keep, maps, torch.zeros_like(maps)).amax(dim=2)
