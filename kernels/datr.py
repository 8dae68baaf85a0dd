"""Query-conditioned token re-encoding (DATR), its kept queries and mask weights, and its token sets as factors.

DATR_s(F)_j = F_j + alpha * A_j,  A_j = sum_{q in K_s} softmax_q(F_j . Q_q / sqrt(C)) Q_q

A is computed once per scope (batched over images and scopes, streamed over fixed
chunks of kept queries) and reused for every alpha. A scope with no kept query has A = 0 exactly, so
DATR_s(F) = F exactly and nothing is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def kept_widths(kept: torch.Tensor) -> tuple[int, int]:
    """The compacted widths of a batch's kept queries, from ONE host read: (the most queries any
    (image, prompt) keeps, the most any image keeps over all its prompts), each at least 1.

    kept (B, P, Q) bool. The width is a data-dependent size (it sets the shapes of the attention
    and of the mask maxima), so the host must know it; the callers pass it on to compact_kept
    (per prompt and global) and mask_weights, which then read nothing.
    """
    base = kept.shape[1] * kept.shape[2] + 1  # above any count: both maxima travel in one integer
    both = int(kept.sum(-1).amax() * base + kept.sum((-1, -2)).amax())  # the one read
    return max(both // base, 1), max(both % base, 1)


def kept_first(kept: torch.Tensor, width: int | None) -> torch.Tensor:
    """Indices (..., K) of each row's kept entries first (in their original order), cut to K = width.

    kept (..., Q) bool; width None reads K = the largest kept count (at least 1) from the host.
    """
    if width is None:
        width = max(int(kept.sum(-1).max()), 1)  # a host read: pass the width to avoid it
    return torch.argsort((~kept).to(torch.int8), dim=-1, stable=True)[..., :width]


def compact_kept(queries: torch.Tensor, kept: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each scope's kept queries to the front and cut the padding.

    queries (B, S, Q, C), kept (B, S, Q) bool -> (B, S, K, C), key mask (B, S, K), with
    K = width, or without it the largest kept count in the batch (at least 1; one host read).
    Attention over the kept set does not depend on query order, and K << Q makes the attention
    call cheap. A width above the largest count only adds masked padding (an exact no-op for
    attend_queries); below it, it would drop kept queries.
    """
    assert queries.shape[:3] == kept.shape, f"queries {tuple(queries.shape)} vs kept {tuple(kept.shape)}"
    order = kept_first(kept, width)
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


def mask_weights(query_masks: torch.Tensor, kept: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """W(j) = max over kept queries of the pooled mask probability; 0 with no kept query.

    query_masks (B, P, Q, N) or (B, P, Q, H, W) probabilities; kept (B, P, Q) bool
    -> (B, P, N) float32. Only the kept queries' maps are read (moved to the front first);
    width: as compact_kept's (the per-prompt width of kept_widths); None reads it from the host.
    """
    qm = query_masks.reshape(*query_masks.shape[:3], -1)
    order = kept_first(kept, width)
    maps = torch.gather(qm, 2, order[..., None].expand(*order.shape, qm.shape[-1])).float()  # (B, P, K, N)
    keep = torch.gather(kept, 2, order)[..., None]
    return torch.where(keep, maps, torch.zeros_like(maps)).amax(dim=2)


# ------------------------------------------------------------------ DATR token sets as factors
#
# A DATR token set F + alpha * A_g is never built: it is the factors (F, A_g, alpha), with
# A_g = P_g K_g (the softmax weights of a scope's kept queries times those queries; a
# control that permutes P_g across tokens is just another A_g). Its covariance is
#   Cov(F) + alpha (C_g + C_g^T) + alpha^2 D_g,  C_g = F_c^T A_gc / (n-1),  D_g = A_gc^T A_gc / (n-1)
# (one Cov(F) per image, C_g and D_g once per A_g, shared by every alpha), and its PCA
# projection is (F - mean) W + alpha A_g W. Memory: one (N, C) set per A_g instead of one per slot.


def host_to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small tensor of host values on `device`. On CUDA it is staged in pinned memory and copied
    without blocking the host (torch.tensor(values, device=cuda) would wait for the copy)."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


@dataclass
class AlphaGroup:
    """The DATR slots of one alpha: slots (J,) in 1..M-1 and their groups (J,) on the device (None
    when they are every group in order, so that attended needs no gather)."""

    alpha: float
    slots: torch.Tensor
    groups: torch.Tensor | None


@dataclass
class DatrFactors:
    """Problem slots of one batch as factors. Slot 0 of each image is F itself; slot j >= 1 is
    F + slot_alpha[j-1] * attended[:, slot_group[j-1]].

    tokens (B, N, C); attended (B, G, N, C) one A_g per scope group (a scope at a tau, or a
    control of one); slot_group, slot_alpha: one entry per DATR slot (M - 1 of them). Their
    index tensors are built on the tokens' device once, here, in two host-to-device copies
    (group_index, alpha_values and alpha_groups), not in every call that uses them.
    """

    tokens: torch.Tensor
    attended: torch.Tensor
    slot_group: list[int]
    slot_alpha: list[float]
    group_index: torch.Tensor = field(init=False, repr=False)  # (M-1,) int64
    alpha_values: torch.Tensor = field(init=False, repr=False)  # (M-1,) tokens' dtype
    alpha_groups: list[AlphaGroup] = field(init=False, repr=False)

    def __post_init__(self):
        assert len(self.slot_group) == len(self.slot_alpha), f"{len(self.slot_group)} groups, {len(self.slot_alpha)} alphas"
        dev = self.tokens.device
        by_alpha: dict[float, tuple[list[int], list[int]]] = {}  # distinct alphas in first-seen order
        for j, (g, a) in enumerate(zip(self.slot_group, self.slot_alpha, strict=True)):
            slots, groups = by_alpha.setdefault(a, ([], []))
            slots.append(j + 1)
            groups.append(g)
        every_group = list(range(self.attended.shape[1]))
        # one copy for every index: the slot groups, then each alpha's slots and (unless all) groups
        flat, cuts = list(self.slot_group), []
        for slots, groups in by_alpha.values():
            cuts.append((len(flat), len(slots), groups != every_group))
            flat += slots + (groups if groups != every_group else [])
        index = host_to_device(flat, torch.long, dev)
        self.group_index = index[: len(self.slot_group)]
        self.alpha_values = host_to_device(self.slot_alpha, self.tokens.dtype, dev)
        self.alpha_groups = [AlphaGroup(a, index[lo : lo + n], index[lo + n : lo + 2 * n] if gathered else None)
                             for a, (lo, n, gathered) in zip(by_alpha, cuts, strict=True)]

    @property
    def slots(self) -> int:  # M, the encoder slot included
        return 1 + len(self.slot_group)

    def materialise(self) -> torch.Tensor:
        """The token sets themselves (B, M, N, C): the reference the factored path is tested against."""
        alpha = self.alpha_values[None, :, None, None]
        datr = self.tokens[:, None] + alpha * self.attended[:, self.group_index]
        return torch.cat([self.tokens[:, None], datr], 1)


def datr_moments(f: DatrFactors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (B*M, C), covariance (B*M, C, C) and token count (B*M,) of every slot, from the factors.

    Denominator n - 1 as kernels.pca.weighted_moments; products of centred factors.
    """
    tokens, attended = f.tokens, f.attended
    b, n, c = tokens.shape
    g = attended.shape[1]
    denom = max(n - 1, 1)
    mean_f = tokens.mean(1)  # (B, C)
    mean_a = attended.mean(2)  # (B, G, C)
    f_c = tokens - mean_f[:, None]
    cov_f = f_c.transpose(1, 2) @ f_c / denom  # (B, C, C)
    cross = torch.empty(b, g, c, c, dtype=tokens.dtype, device=tokens.device)  # C_g
    own = torch.empty_like(cross)  # D_g
    for gi in range(g):  # one group at a time: a centred copy of one A_g, not of all
        a_c = attended[:, gi] - mean_a[:, gi, None]
        cross[:, gi] = f_c.transpose(1, 2) @ a_c / denom
        own[:, gi] = a_c.transpose(1, 2) @ a_c / denom
    group = f.group_index
    alpha = f.alpha_values[None, :, None, None]
    cross_s = cross[:, group]  # (B, M-1, C, C)
    cov = cov_f[:, None] + alpha * (cross_s + cross_s.transpose(-1, -2)) + alpha * alpha * own[:, group]
    mean = mean_f[:, None] + alpha[..., 0] * mean_a[:, group]  # (B, M-1, C)
    m = f.slots
    cov = torch.cat([cov_f[:, None], cov], 1).reshape(b * m, c, c)
    mean = torch.cat([mean_f[:, None], mean], 1).reshape(b * m, c)
    total = torch.full((b * m,), float(n), dtype=tokens.dtype, device=tokens.device)
    return mean, cov, total


def datr_project(f: DatrFactors, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Every slot projected on its own components without building it: (F - mean) W + alpha A_g W.

    mean (B*M, C), components (B*M, d, C) as kernels.pca.PCAResult -> (B*M, N, d).
    """
    tokens, attended = f.tokens, f.attended
    b, n, c = tokens.shape
    m = f.slots
    w = components.reshape(b, m, -1, c).transpose(-1, -2)  # (B, M, C, d)
    offset = mean.reshape(b, m, 1, c) @ w  # (B, M, 1, d)
    d = w.shape[-1]
    z = torch.empty(b, m, n, d, dtype=tokens.dtype, device=tokens.device)
    z[:, 0] = tokens @ w[:, 0]
    for group in f.alpha_groups:
        ws = w[:, group.slots]  # (B, J, C, d)
        j = ws.shape[1]
        # F W for this alpha's J slots from one (N, C) x (C, J*d) product per image (no per-slot copy of F)
        fw = (tokens @ ws.permute(0, 2, 1, 3).reshape(b, c, j * d)).reshape(b, n, j, d)
        a = attended if group.groups is None else attended[:, group.groups]
        z[:, group.slots] = fw.permute(0, 2, 1, 3) + group.alpha * torch.matmul(a, ws)
    return z.sub_(offset).reshape(b * m, n, -1)
