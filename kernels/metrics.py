"""Batched metrics on label maps, tokens and masks (definitions: DESIGN.md).

Every function takes a leading batch axis B. A value that is undefined for one item
(an empty effective-token set, an empty mask and class) is NaN; the engine writes it
as null.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.matching import linear_sum_assignment


def contingency(a: torch.Tensor, b: torch.Tensor, ka: int, kb: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Counts of label pairs: a, b (B, N) int with values in [0, ka) / [0, kb) -> (B, ka, kb) float64.

    Tokens with valid = False, or a negative / out-of-range label, are not counted.
    """
    ok = (a >= 0) & (a < ka) & (b >= 0) & (b < kb)
    if valid is not None:
        ok = ok & valid
    flat = torch.where(ok, a.long() * kb + b.long(), torch.full_like(a, ka * kb, dtype=torch.long))
    counts = torch.zeros(a.shape[0], ka * kb + 1, dtype=torch.float64, device=a.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float64))
    return counts[:, :-1].reshape(-1, ka, kb)


def align_to_reference(labels: torch.Tensor, reference: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Relabel `labels` (B, N) so its clusters carry the reference cluster they overlap most.

    One-to-one Hungarian matching maximising the agreement over `valid` tokens (all by
    default). Returns the relabelled (B, N) int64.
    """
    table = contingency(labels, reference, k, k, valid)  # (B, k, k)
    mapping = linear_sum_assignment(table, maximize=True)  # label -> reference label
    return torch.gather(mapping, 1, labels.long().clamp(min=0))


def majority_filter(label_map: torch.Tensor, k: int) -> torch.Tensor:
    """One simultaneous pass of a 3x3 plurality filter: (B, H, W) -> (B, H, W) int64.

    Votes come from the in-bounds neighbours and the centre; the winner replaces the
    centre only when it is the unique maximum (any tie keeps the centre label).
    """
    # vote counts are small integers (<= 9): exact in float32, which GPUs convolve fast. The one-hot
    # maps by scatter: F.one_hot checks the label range with two host reads on a CPU
    b, h, w = label_map.shape
    onehot = torch.zeros(b, k, h, w, device=label_map.device).scatter_(1, label_map.long()[:, None], 1.0)  # (B, k, H, W)
    votes = F.conv2d(onehot.reshape(-1, 1, *label_map.shape[1:]), torch.ones(1, 1, 3, 3, device=label_map.device), padding=1)
    votes = votes.reshape(onehot.shape)
    top2 = votes.topk(min(2, k), dim=1)
    winner = top2.indices[:, 0]
    unique = top2.values[:, 0] > top2.values[:, 1] if k > 1 else torch.ones_like(winner, dtype=torch.bool)
    return torch.where(unique, winner, label_map.long())


def flip_ratio(aligned: torch.Tensor, reference: torch.Tensor, effective: torch.Tensor) -> torch.Tensor:
    """Share of effective tokens whose aligned label differs from the reference: (B,) float64, NaN if none."""
    eff = effective.double()
    count = eff.sum(-1)
    flips = ((aligned != reference).double() * eff).sum(-1)
    return torch.where(count > 0, flips / count.clamp(min=1), torch.full_like(count, float("nan")))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (..., N) over mask (..., N) -> (...) float64; NaN where the mask is empty."""
    m = mask.double()
    count = m.sum(-1)
    total = (values.double() * m).sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(count, float("nan")))


def datr_cosine_distances(
    tokens: torch.Tensor, attended: torch.Tensor, alphas: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both cosine measures of DESIGN.md without materialising DATR tokens.

    tokens F (B, N, C), attended A (B, S, N, C) -> (1 - cos(F, A)) of shape (B, S, N), and
    (1 - cos(F, F + alpha A)) of shape (len(alphas), B, S, N), from the three dot
    products F.F, F.A and A.A. A zero vector counts as cos = 0.
    """
    eps = 1e-12
    ff = torch.linalg.vecdot(tokens, tokens)[:, None]  # (B, 1, N)
    fa = torch.linalg.vecdot(tokens[:, None], attended)  # (B, S, N)
    aa = torch.linalg.vecdot(attended, attended)
    f_norm = ff.sqrt()
    paper = 1.0 - fa / (f_norm * aa.sqrt()).clamp(min=eps)
    shifts = []
    for alpha in alphas:
        d_norm = (ff + 2 * alpha * fa + alpha * alpha * aa).clamp(min=0).sqrt()
        shifts.append(1.0 - (ff + alpha * fa) / (f_norm * d_norm).clamp(min=eps))
    return paper, torch.stack(shifts)


def entropy_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of (B, k) counts."""
    total = counts.sum(-1, keepdim=True).clamp(min=1e-300)
    prob = counts / total
    return -(torch.where(prob > 0, prob * prob.log(), torch.zeros_like(prob))).sum(-1)


def nmi_from_contingency(table: torch.Tensor) -> torch.Tensor:
    """Normalised mutual information (arithmetic mean normaliser, as scikit-learn): (B, ka, kb) -> (B,).

    NaN for an empty table (no token with a valid label: nothing to score).
    """
    table = table.double()
    n = table.sum((-1, -2))
    rows, cols = table.sum(-1), table.sum(-2)
    outer = rows[:, :, None] * cols[:, None, :]
    nz = table > 0
    term = torch.where(nz, table * (table.clamp(min=1e-300).log() + n.clamp(min=1e-300).log()[:, None, None] - outer.clamp(min=1e-300).log()), torch.zeros_like(table))
    mi = (term.sum((-1, -2)) / n.clamp(min=1e-300)).clamp(min=0)
    h_rows, h_cols = entropy_from_counts(rows), entropy_from_counts(cols)
    norm = 0.5 * (h_rows + h_cols)
    n_rows, n_cols = (rows > 0).sum(-1), (cols > 0).sum(-1)
    trivial = (n_rows == n_cols) & (n_rows <= 1)  # both single-cluster: perfect by convention
    nmi = torch.where(mi > 0, mi / norm.clamp(min=1e-300), torch.zeros_like(mi))
    nmi = torch.where(trivial, torch.ones_like(nmi), nmi)
    return torch.where(n > 0, nmi, torch.full_like(nmi, float("nan")))  # no labelled token: undefined


def ari_from_contingency(table: torch.Tensor) -> torch.Tensor:
    """Adjusted Rand index from the pair-confusion counts, as scikit-learn: (B, ka, kb) -> (B,); NaN for an empty table."""
    table = table.double()
    n = table.sum((-1, -2))
    rows, cols = table.sum(-1), table.sum(-2)
    sum_sq = (table * table).sum((-1, -2))
    tp = sum_sq - n
    fp = (table * cols[:, None, :]).sum((-1, -2)) - sum_sq
    fn = (table * rows[:, :, None]).sum((-1, -2)) - sum_sq
    tn = n * n - fp - fn - sum_sq
    denom = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    ari = 2.0 * (tp * tn - fn * fp) / torch.where(denom != 0, denom, torch.ones_like(denom))
    ari = torch.where((fn == 0) & (fp == 0), torch.ones_like(ari), ari)
    return torch.where(n > 0, ari, torch.full_like(ari, float("nan")))  # no labelled token: undefined


def matched_accuracy(table: torch.Tensor) -> torch.Tensor:
    """Accuracy after one-to-one matching of clusters (rows) to classes (cols): (B,) float64.

    Unmatched clusters count as wrong; NaN when the table is empty.
    """
    mapping = linear_sum_assignment(table, maximize=True)  # (B, ka)
    matched = torch.gather(table, 2, mapping.clamp(min=0)[:, :, None])[:, :, 0]
    matched = torch.where(mapping >= 0, matched, torch.zeros_like(matched)).sum(-1)
    n = table.sum((-1, -2))
    return torch.where(n > 0, matched / n.clamp(min=1), torch.full_like(n, float("nan")))


def mask_iou(pred: torch.Tensor, gt: torch.Tensor, class_ids: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """IoU of predicted masks with GT classes, ignored cells left out.

    pred (B, P, H, W) bool; gt (B, H, W) int; class_ids (P,) the class of each prompt
    -> (B, P) float64, NaN where prediction and class are both empty.
    """
    valid = (gt != ignore)[:, None]
    target = gt[:, None].long() == class_ids.to(gt.device).long()[None, :, None, None]
    inter = (pred & target & valid).flatten(2).sum(-1).double()
    union = ((pred | target) & valid).flatten(2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))


def calinski_harabasz(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Calinski-Harabasz index per problem: x (B, N, d), labels (B, N) -> (B,) float64 (NaN if < 2 clusters)."""
    x = x.double()
    onehot = F.one_hot(labels.long().clamp(min=0), k).double()  # (B, N, k)
    counts = onehot.sum(1)  # (B, k)
    centres = (onehot.transpose(1, 2) @ x) / counts.clamp(min=1)[..., None]
    mean = x.mean(1, keepdim=True)
    between = (counts * ((centres - mean) ** 2).sum(-1)).sum(-1)
    within = ((x - onehot @ centres) ** 2).sum((-1, -2))
    n_used = (counts > 0).sum(-1).double()
    n = x.shape[1]
    score = between * (n - n_used) / (within * (n_used - 1)).clamp(min=1e-300)
    score = torch.where(within > 0, score, torch.ones_like(score))  # sklearn: 1.0 for zero dispersion
    return torch.where(n_used >= 2, score, torch.full_like(score, float("nan")))


def davies_bouldin(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Davies-Bouldin index per problem: (B, N, d), (B, N) -> (B,) float64 (NaN if < 2 clusters)."""
    x = x.double()
    onehot = F.one_hot(labels.long().clamp(min=0), k).double()
    counts = onehot.sum(1)
    centres = (onehot.transpose(1, 2) @ x) / counts.clamp(min=1)[..., None]
    dist_own = torch.linalg.vector_norm(x - onehot @ centres, dim=-1)  # (B, N)
    scatter = (onehot * dist_own[..., None]).sum(1) / counts.clamp(min=1)  # (B, k)
    sep = torch.cdist(centres, centres)  # (B, k, k)
    used = counts > 0
    pair = used[:, :, None] & used[:, None, :] & ~torch.eye(k, dtype=torch.bool, device=x.device)
    ratio = (scatter[:, :, None] + scatter[:, None, :]) / sep.clamp(min=1e-300)
    ratio = torch.where(pair & (sep > 0), ratio, torch.zeros_like(ratio))
    n_used = used.sum(-1).double()
    score = ratio.amax(-1).sum(-1) / n_used.clamp(min=1)
    return torch.where(n_used >= 2, score, torch.full_like(score, float("nan")))


def silhouette_sampled(x: torch.Tensor, labels: torch.Tensor, k: int, sample: int, seed: int = 0) -> torch.Tensor:
    """Mean silhouette over a seeded sample of tokens (the same positions in every problem).

    x (B, N, d), labels (B, N) -> (B,) float64; NaN with fewer than 2 clusters in the sample.
    """
    b, n, _ = x.shape
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    idx = torch.randperm(n, generator=gen)[: min(sample, n)].to(x.device)
    xs = x[:, idx].double()
    ls = labels[:, idx].long().clamp(min=0)
    dist = torch.cdist(xs, xs)  # (B, m, m)
    onehot = F.one_hot(ls, k).double()  # (B, m, k)
    counts = onehot.sum(1)  # (B, k)
    sums = dist @ onehot  # (B, m, k) total distance to each cluster
    own = torch.gather(counts, 1, ls)  # (B, m) size of own cluster
    a = torch.gather(sums, 2, ls[..., None])[..., 0] / (own - 1).clamp(min=1)
    mean_other = sums / counts[:, None, :].clamp(min=1)
    mean_other = torch.where((counts[:, None, :] > 0) & (onehot == 0), mean_other, torch.full_like(mean_other, float("inf")))
    bb = mean_other.amin(-1)
    s = (bb - a) / torch.maximum(a, bb).clamp(min=1e-300)
    s = torch.where(own > 1, s, torch.zeros_like(s))  # sklearn: 0 for singleton clusters
    n_used = (counts > 0).sum(-1)
    return torch.where(n_used >= 2, s.mean(-1), torch.full((b,), float("nan"), dtype=torch.float64, device=x.device))
