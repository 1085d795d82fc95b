"""The report's failure statistics against brute force: per-query AP and first-correct rank,
per-class Recall@1 / MAP@R, the confused class pairs and the hardest queries' order."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from _report_helpers import brute_force_queries, clustered_embeddings

from rankedlist.report.failure_analysis import analyse_failures, first_correct_ranks


@pytest.mark.parametrize("query_count", [None, 60])
def test_failure_statistics_match_brute_force(query_count):
    x, y = clustered_embeddings(12, 10, dim=8, noise=1.1, seed=2)
    if query_count is not None:  # In-Shop style: queries then gallery, one class gallery-less
        order = np.random.default_rng(0).permutation(len(y))
        x, y = x[order], y[order]
        y[query_count:][y[query_count:] == y[0]] = (y[0] + 1) % 12
    brute = brute_force_queries(x, y, query_count)
    got = analyse_failures(x, y, ks=(1, 4), query_count=query_count, max_pairs=100)

    assert got.query_rows.tolist() == sorted(brute)
    np.testing.assert_allclose(got.average_precision, [brute[q][0] for q in sorted(brute)])
    ranks = np.array([brute[q][1] for q in sorted(brute)])
    np.testing.assert_array_equal(got.first_relevant_rank == 0, ranks == 0)
    np.testing.assert_array_equal(first_correct_ranks(x, y, got.query_rows, query_count), ranks)

    for c, n, r1, m in zip(got.class_ids, got.class_queries, got.class_recall_at_1,
                           got.class_map_at_r, strict=True):  # fmt: skip
        members = [q for q in brute if y[q] == c]
        assert n == len(members)
        assert r1 == pytest.approx(np.mean([brute[q][1] == 0 for q in members]))
        assert m == pytest.approx(np.mean([brute[q][0] for q in members]))

    confused = Counter()
    for q, (_, _, nearest, _) in brute.items():
        if y[nearest] != y[q]:
            confused[(int(y[q]), int(y[nearest]))] += 1
    pairs = {(p.a, p.b): (p.a_to_b, p.b_to_a) for p in got.confused_pairs}
    expected = {}
    for (a, b), count in confused.items():
        lo, hi = min(a, b), max(a, b)
        ab, ba = expected.get((lo, hi), (0, 0))
        expected[(lo, hi)] = (ab + count, ba) if a == lo else (ab, ba + count)
    assert pairs == expected
    totals = [p.count for p in got.confused_pairs]
    assert totals == sorted(totals, reverse=True)

    hardest = got.query_rows[got.hardest(15)]
    aps = [brute[q][0] for q in hardest]
    assert aps == sorted(aps) and max(aps) <= min(v[0] for q, v in brute.items()
                                                 if q not in hardest)  # fmt: skip
