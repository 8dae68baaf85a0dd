"""The seed ensemble's per-row measures (README "Effects"; docs/DESIGN.md, "Seed ensembles and effects").

Every problem is clustered with S seeds (members s = 0..S-1: restart s of the seed's k-means++
stream). Per DATR slot, on its effective tokens E, with each partition Hungarian-aligned to the
reference partition over all N tokens (as the paper's flip ratio is):

    flip_between       mean over seed pairs s != t of flip(L_enc^s, L_slot^t)
    flip_within        mean over s != t of flip(L_enc^s, L_enc^t)  -- the encoder's own instability
    flip_null_between  mean over s != t of flip(L_enc^s, L_null^t)
    effect_instability = flip_between - flip_within,  effect_null = flip_between - flip_null_between,
    each with a jackknife standard error over seeds (leave one seed out of every pair).

With `--kmeans-init encoder` the design is paired: member s of a DATR (or null) problem starts
from the encoder's member s, a Lloyd fixed point, so the pairs are (s, s) and flip_within is 0
exactly (a restart from a fixed point of the same tokens moves nothing).

Exactness: a flip count is an integer computed from integer contingency tables (float32 sums of
0/1 below 2^24 are exact), so where a slot's partitions equal the encoder's (alpha = 0, or no
kept query) flip_between equals flip_within bit for bit and both effects are exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.matching import linear_sum_assignment

ONEHOT_BUDGET = 64 * 2**20  # bytes of one-hot partitions held at once (chunks of slots)


def onehot_partitions(labels: torch.Tensor, k: int) -> torch.Tensor:
    """labels (..., S, N) in [0, k) (-1 = no token) -> (..., S * k, N) float32 indicator rows."""
    *lead, s, n = labels.shape
    hot = torch.nn.functional.one_hot(labels.long().clamp(min=0), k).to(torch.float32)  # (..., S, N, k)
    hot = hot * (labels >= 0)[..., None]
    return hot.transpose(-1, -2).reshape(*lead, s * k, n)


def seed_pairs(seeds: int, paired: bool, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The (reference seed, other seed) pairs: s != t (independent, row-major) or s == t (paired), as two
    (Q,) tensors built on `device` from their count alone (no data-dependent read)."""
    if paired:
        same = torch.arange(seeds, device=device)
        return same, same
    pair = torch.arange(seeds * (seeds - 1), device=device)
    ref = pair // (seeds - 1)
    other = pair % (seeds - 1)
    return ref, other + (other >= ref).long()


def pair_flip_counts(full: torch.Tensor, masked: torch.Tensor, k: int, ref: torch.Tensor,
                     other: torch.Tensor) -> torch.Tensor:
    """Flipped effective tokens per seed pair from contingency tables.

    full, masked (..., S*k, S*k): counts of (reference label of seed s, other label of seed t)
    over all tokens and over E; ref, other (Q,) the pairs -> (..., Q) float64 counts. The other
    partition is aligned to the reference one by a maximum-agreement one-to-one matching over all
    tokens (kernels.metrics.align_to_reference), then counted where the two disagree on E.
    """
    lead, lead_e = full.shape[:-2], masked.shape[:-2]  # full may have size-1 dims that masked has wider
    s = full.shape[-1] // k
    blocks = full.reshape(*lead, s, k, s, k)[..., ref, :, other, :]  # (Q, ..., k_ref, k_other)
    blocks_e = masked.reshape(*lead_e, s, k, s, k)[..., ref, :, other, :]
    q = ref.shape[0]
    table = blocks.movedim(0, -3).transpose(-1, -2).double()  # (..., Q, k_other, k_ref): label -> reference
    mapping = linear_sum_assignment(table.reshape(-1, k, k), maximize=True).reshape(*lead, q, k)
    mapping = mapping.expand(*lead_e, q, k)
    agree_e = torch.gather(blocks_e.movedim(0, -3).transpose(-1, -2).double(), -1, mapping[..., None])[..., 0].sum(-1)
    total_e = blocks_e.movedim(0, -3).sum((-1, -2)).double()
    return total_e - agree_e


@dataclass
class EnsembleMeasures:
    """Per (image, DATR slot) of one part: (B, J) float64 each, NaN where E is empty or not measured."""

    flip_between: torch.Tensor
    flip_within: torch.Tensor
    flip_null_between: torch.Tensor
    effect_instability: torch.Tensor
    effect_instability_se: torch.Tensor
    effect_null: torch.Tensor
    effect_null_se: torch.Tensor


def jackknife_se(diffs: torch.Tensor, ref: torch.Tensor, other: torch.Tensor, seeds: int) -> torch.Tensor:
    """Standard error of the mean of per-pair values (..., Q) over seeds, by leaving one seed out of
    every pair it takes part in: sqrt((S-1)/S * sum_i (theta_-i - mean theta)^2)."""
    left_out = torch.arange(seeds, device=ref.device)[:, None]
    keep = ((ref != left_out) & (other != left_out)).to(diffs.device, diffs.dtype)  # (S, Q)
    loo = (diffs[..., None, :] * keep).sum(-1) / keep.sum(-1).clamp(min=1)  # (..., S)
    centred = loo - loo.mean(-1, keepdim=True)
    return ((seeds - 1) / seeds * (centred * centred).sum(-1)).sqrt()


def ensemble_measures(encoder: torch.Tensor, real: torch.Tensor, null: torch.Tensor | None, effective: torch.Tensor,
                      k: int, paired: bool) -> EnsembleMeasures:
    """The ensemble columns of one part.

    encoder (B, S, N): the encoder's members; real (B, J, S, N) and null (B, J, S, N) or None: the
    DATR slots' and their nulls' members; effective (B, J, N) bool. Labels in [0, k), -1 = no token.
    """
    b, j, s, n = real.shape
    ref, other = seed_pairs(s, paired, real.device)
    enc_hot = onehot_partitions(encoder, k)  # (B, S*k, N)
    count = effective.double().sum(-1)  # (B, J)
    between = _flips_against(enc_hot, real, effective, k, ref, other)  # (B, J, Q) counts
    if paired:
        within = torch.zeros_like(between)
    else:  # the encoder against itself: its matching over all tokens is the same for every slot, made once
        within = _flips_against(enc_hot, encoder[:, None], effective, k, ref, other)
    nan = torch.full((b, j), float("nan"), dtype=torch.float64, device=real.device)
    ok = count > 0
    share = lambda counts: counts / count.clamp(min=1)[..., None]  # noqa: E731 -- (B, J, Q) shares
    mean = lambda x: torch.where(ok, x.mean(-1), nan)  # noqa: E731
    se = lambda x: torch.where(ok, jackknife_se(x, ref, other, s), nan)  # noqa: E731
    f_between, f_within = share(between), share(within)
    out = EnsembleMeasures(flip_between=mean(f_between), flip_within=mean(f_within), flip_null_between=nan,
                           effect_instability=nan, effect_instability_se=se(f_between - f_within), effect_null=nan,
                           effect_null_se=nan)
    out.effect_instability = out.flip_between - out.flip_within
    if null is not None:
        f_null = share(_flips_against(enc_hot, null, effective, k, ref, other))
        out.flip_null_between = mean(f_null)
        out.effect_null = out.flip_between - out.flip_null_between
        out.effect_null_se = se(f_between - f_null)
    return out


def _flips_against(enc_hot: torch.Tensor, members: torch.Tensor, effective: torch.Tensor, k: int, ref: torch.Tensor,
                   other: torch.Tensor) -> torch.Tensor:
    """Flip counts (B, J, Q) of every slot's members against the encoder's, in chunks of slots.

    members (B, J, S, N), or (B, 1, S, N) for one set of members that every slot's effective tokens
    share (its matching over all tokens is then made once per image). Counts are sums of 0/1 in
    float32 (exact below 2^24), so equal partitions give equal counts whichever way they are made.
    """
    b, _, s, n = members.shape
    j = effective.shape[1]
    step = max(1, ONEHOT_BUDGET // max(1, 2 * b * s * k * n * 4))
    shared = onehot_partitions(members, k) if members.shape[1] == 1 else None  # (B, 1, S*k, N)
    out = []
    for lo in range(0, j, step):
        hot = shared if shared is not None else onehot_partitions(members[:, lo : lo + step], k)  # (B, J', S*k, N)
        eff = effective[:, lo : lo + step, None, :].to(hot.dtype)
        full = enc_hot[:, None] @ hot.transpose(-1, -2)  # (B, J' or 1, S*k ref, S*k other)
        masked = enc_hot[:, None] @ (hot * eff).transpose(-1, -2)  # (B, J', ...)
        out.append(pair_flip_counts(full, masked, k, ref, other))
    return torch.cat(out, 1)
