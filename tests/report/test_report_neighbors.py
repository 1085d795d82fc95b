"""The retrieval grid's neighbours and right/wrong decisions against a brute-force numpy search."""

from __future__ import annotations

import numpy as np
import pytest
from _report_helpers import clustered_embeddings

from rankedlist.report.neighbors import (
    neighbor_matches,
    pick_queries,
    top_k_neighbors,
)


def brute_force(x: np.ndarray, queries: np.ndarray, k: int, query_count: int | None):
    """Sort every gallery row by cosine similarity with a Python loop; self dropped by index."""
    gallery = list(range(len(x))) if query_count is None else list(range(query_count, len(x)))
    out = []
    for q in queries:
        cands = [g for g in gallery if g != q or query_count is not None]
        sims = [float(np.dot(x[q].astype(np.float64), x[g].astype(np.float64))) for g in cands]
        order = np.argsort(-np.asarray(sims), kind="stable")[:k]
        out.append([cands[i] for i in order])
    return np.asarray(out)


@pytest.mark.parametrize("query_count", [None, 12])
def test_top_k_matches_brute_force(query_count):
    x, labels = clustered_embeddings(5, 6, dim=8, noise=1.0, seed=3)
    # Shuffle the rows so that queries and gallery (In-Shop case) share classes.
    perm = np.random.default_rng(0).permutation(len(x))
    x, labels = x[perm], labels[perm]
    q_limit = len(x) if query_count is None else query_count
    queries = np.arange(0, q_limit, 2)
    sims, rows = top_k_neighbors(x, queries, 5, query_count=query_count)
    expected = brute_force(x, queries, 5, query_count)
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", x[queries], x[rows]), atol=1e-5)
    if query_count is None:
        assert not (rows == queries[:, None]).any()  # never the query itself
    else:
        assert (rows >= query_count).all()  # only gallery rows

    # The colour decision: green exactly where the brute-force neighbour has the query's label.
    matches = neighbor_matches(labels, queries, rows)
    brute = np.array(
        [[labels[g] == labels[q] for g in row] for q, row in zip(queries, expected, strict=True)]
    )
    np.testing.assert_array_equal(matches, brute)
    assert matches.any() and not matches.all()  # the data exercises both colours


def test_self_excluded_by_index_with_duplicates():
    # Rows 0 and 1 are the same point: each must find the other first, never itself.
    x = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]]
    sims, rows = top_k_neighbors(x, np.array([0, 1]), 2)
    assert rows[0, 0] == 1 and rows[1, 0] == 0
    assert sims[0, 0] == pytest.approx(1.0)


def test_k_is_capped_by_the_gallery():
    x, _ = clustered_embeddings(2, 2, dim=4)
    _, rows = top_k_neighbors(x, np.arange(4), 10)
    assert rows.shape == (4, 3)  # 4 images, self excluded
    _, rows = top_k_neighbors(x, np.arange(1), 10, query_count=1)
    assert rows.shape == (1, 3)


def test_pick_queries_prefers_answerable_and_is_seeded():
    # Class 0 has one image only: with the gallery = the query set it can never be answered.
    labels = np.array([0, 1, 1, 2, 2, 2])
    for seed in range(5):
        chosen = pick_queries(labels, 3, seed=seed)
        assert 0 not in chosen and len(chosen) == 3
    np.testing.assert_array_equal(pick_queries(labels, 3, seed=7), pick_queries(labels, 3, seed=7))
    # In-Shop: queries 0-2, gallery 3-5; query label 9 has no gallery item.
    labels = np.array([9, 1, 2, 1, 2, 2])
    assert set(pick_queries(labels, 5, query_count=3).tolist()) == {1, 2}


def test_bad_query_count_is_rejected():
    x, _ = clustered_embeddings(2, 2, dim=4)
    with pytest.raises(ValueError, match="query_count"):
        top_k_neighbors(x, np.arange(1), 2, query_count=4)
