"""DATR re-encoding against a plain explicit-softmax reference."""

import torch

from bench.dispatch import OpCounter
from kernels.datr import attend_queries, compact_kept, datr_tokens, kept_widths, mask_weights


def reference_attended(tokens, queries, kept):
    """Loop reference: A_j = sum_q softmax_q(F_j . Q_q / sqrt(C)) Q_q over kept q (float64)."""
    b, n, c = tokens.shape
    s = queries.shape[1]
    out = torch.zeros(b, s, n, c, dtype=torch.float64)
    for i in range(b):
        for j in range(s):
            q = queries[i, j][kept[i, j]].double()
            if q.shape[0] == 0:
                continue
            logits = tokens[i].double() @ q.T / c**0.5
            weights = torch.exp(logits - logits.max(1, keepdim=True).values)
            weights = weights / weights.sum(1, keepdim=True)
            out[i, j] = weights @ q
    return out


def make(b=3, s=4, n=50, q=12, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, n, c, generator=g)
    queries = torch.randn(b, s, q, c, generator=g) * 2
    kept = torch.rand(b, s, q, generator=g) < 0.4
    kept[0, 1] = False  # a scope with no kept query
    kept[2, 3] = True  # all kept
    return tokens, queries, kept


def test_attention_matches_explicit_softmax_reference():
    tokens, queries, kept = make()
    got = attend_queries(tokens.double(), queries.double(), kept)
    torch.testing.assert_close(got, reference_attended(tokens, queries, kept), rtol=1e-10, atol=1e-12)
    got32 = attend_queries(tokens, queries, kept)
    torch.testing.assert_close(got32.double(), reference_attended(tokens, queries, kept), rtol=1e-4, atol=1e-5)


def test_no_kept_query_leaves_tokens_exactly_unchanged():
    tokens, queries, kept = make()
    attended = attend_queries(tokens, queries, kept)
    out = datr_tokens(tokens, attended, alpha=0.3)
    assert torch.equal(out[0, 1], tokens[0])
    assert bool(torch.isfinite(out).all())
    nothing = torch.zeros_like(kept)
    assert torch.equal(datr_tokens(tokens, attend_queries(tokens, queries, nothing), 0.5), tokens[:, None].expand_as(out))


def test_compacting_kept_queries_does_not_change_attention():
    tokens, queries, kept = make(seed=1)
    full = attend_queries(tokens.double(), queries.double(), kept)
    keys, key_mask = compact_kept(queries.double(), kept)
    assert keys.shape[2] == int(kept.sum(-1).max())
    torch.testing.assert_close(attend_queries(tokens.double(), keys, key_mask), full, rtol=1e-12, atol=1e-12)


def test_global_scope_is_one_softmax_over_all_prompts():
    tokens, queries, kept = make(seed=2)
    b, s, q, c = queries.shape
    glob = attend_queries(tokens.double(), queries.double().reshape(b, 1, s * q, c), kept.reshape(b, 1, s * q))
    ref = reference_attended(tokens, queries.reshape(b, 1, s * q, c), kept.reshape(b, 1, s * q))
    torch.testing.assert_close(glob, ref, rtol=1e-10, atol=1e-12)


def test_kept_widths_cost_one_host_read_and_spare_the_others():
    """One read gives both widths; compact_kept and mask_weights given them read nothing and return
    what they return when they read the width themselves. A wider width only adds masked padding,
    which changes no attended vector."""
    tokens, queries, kept = make(b=3, s=4, q=30, seed=5)
    qm = torch.rand(3, 4, 30, 6, 6, generator=torch.Generator().manual_seed(6))
    with OpCounter() as read:
        width_c, width_g = kept_widths(kept)
    assert read.syncs == 1
    assert (width_c, width_g) == (int(kept.sum(-1).max()), int(kept.sum((1, 2)).max()))
    glob_q, glob_k = queries.reshape(3, 1, 120, 16), kept.reshape(3, 1, 120)
    with OpCounter() as rest:
        keys, key_mask = compact_kept(queries, kept, width_c)
        keys_g, mask_g = compact_kept(glob_q, glob_k, width_g)
        weights = mask_weights(qm, kept, width_c)
    assert rest.syncs == 0
    for got, ref in ((keys, compact_kept(queries, kept)[0]), (keys_g, compact_kept(glob_q, glob_k)[0]),
                     (weights, mask_weights(qm, kept))):
        assert torch.equal(got, ref)
    assert torch.equal(mask_weights(qm, kept, width_c + 7), weights)
    wide = attend_queries(tokens, *compact_kept(queries, kept, width_c + 20))
    assert torch.equal(wide, attend_queries(tokens, keys, key_mask))
    empty = torch.zeros_like(kept)
    assert kept_widths(empty) == (1, 1)  # at least one (masked) key: attention stays well defined


def test_mask_weights_is_max_over_kept_queries():
    g = torch.Generator().manual_seed(3)
    qm = torch.rand(2, 3, 5, 4, 4, generator=g)
    kept = torch.rand(2, 3, 5, generator=g) < 0.5
    kept[1, 2] = False
    w = mask_weights(qm, kept)
    for i in range(2):
        for p in range(3):
            sel = qm[i, p][kept[i, p]].reshape(-1, 16)
            expect = sel.max(0).values if sel.shape[0] else torch.zeros(16)
            torch.testing.assert_close(w[i, p], expect)


def test_result_is_bitwise_independent_of_padding_from_other_images():
    tokens, queries, kept = make(b=3, q=40, seed=4)
    kept[1] = True  # image 1 pads everyone else to 40 keys
    together = attend_queries(tokens, *compact_kept(queries, kept))
    for i in (0, 2):
        alone = attend_queries(tokens[i : i + 1], *compact_kept(queries[i : i + 1], kept[i : i + 1]))
        assert torch.equal(alone[0], together[i])
