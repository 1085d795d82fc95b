"""``retrieval_metrics(..., per_query=...)``: each query's first-relevant rank, R-Precision and
average precision (its MAP@R term), checked against a naive float64 loop on every back end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankedlist.evaluation import retrieval_metrics


def _data(n_classes: int, per_class: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    rng.shuffle(labels)
    x = rng.normal(size=(n_classes, dim))[labels] + 1.3 * rng.normal(size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def _naive(q, ql, g, gl, same_set):
    """Per query with a relevant item: (row, first relevant rank, R-Precision, AP@R), by a
    stable sort on float64 cosines (ties by gallery index)."""
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    out = []
    for i in range(len(q)):
        cols = [j for j in range(len(g)) if not (same_set and j == i)]
        ranked = sorted(cols, key=lambda j: (-sims[i, j], j))
        rel = [gl[j] == ql[i] for j in ranked]
        r = sum(rel)
        if r == 0:
            continue
        gaps = np.diff(np.sort(sims[i, cols]))
        assert gaps.min() > 1e-6  # no near-tie: float32 and float64 rank alike
        hits, ap = 0, 0.0
        for pos in range(r):
            if rel[pos]:
                hits += 1
                ap += hits / (pos + 1)
        out.append((i, rel.index(True), hits / r, ap / r))
    return out


@pytest.mark.parametrize("backend", ["screened", "faiss", "torch"])
@pytest.mark.parametrize("separate_gallery", [False, True])
def test_per_query_values_match_a_naive_loop(backend, separate_gallery):
    x, labels = _data(12, 6, 24, seed=6)
    if separate_gallery:  # In-Shop style, with one query class absent from the gallery (lone)
        q, ql, g, gl = x[:30], labels[:30], x[30:], labels[30:]
        gl = np.where(gl == ql[0], (ql[0] + 1) % 12, gl)
    else:
        q, ql, g, gl = x, labels, x, labels
    per_query: dict = {}
    args = (q, ql) if not separate_gallery else (q, ql, g, gl)
    metrics = retrieval_metrics(*args, ks=(1, 4), backend=backend, per_query=per_query)
    expected = _naive(q, ql, g, gl, same_set=not separate_gallery)
    rows, rank, r_prec, ap = (np.array(v) for v in zip(*expected, strict=True))
    np.testing.assert_array_equal(per_query["rows"], rows)
    got = per_query["first_relevant_rank"]
    if backend == "screened":  # it decides rank < K for the Ks asked, not the rank itself
        for k in (1, 4):
            np.testing.assert_array_equal(got < k, rank < k)
    else:
        np.testing.assert_array_equal(got, rank)
    np.testing.assert_allclose(per_query["r_precision"], r_prec, rtol=0, atol=1e-12)
    np.testing.assert_allclose(per_query["average_precision"], ap, rtol=0, atol=1e-12)
    # The summary is the mean of these values, the lone queries left out.
    assert metrics["lone_queries"] == len(q) - len(rows)
    assert metrics["recall@1"] == np.mean(rank < 1) and metrics["recall@4"] == np.mean(rank < 4)
    assert metrics["map@r"] == pytest.approx(math.fsum(ap) / len(ap), abs=1e-15)
    if separate_gallery:
        assert 0 not in per_query["rows"]  # query 0's class is not in the gallery


def test_per_query_leaves_the_metrics_unchanged():
    x, labels = _data(10, 5, 16, seed=1)
    plain = retrieval_metrics(x, labels, ks=(1, 2))
    assert retrieval_metrics(x, labels, ks=(1, 2), per_query={}) == plain
