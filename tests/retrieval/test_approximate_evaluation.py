"""Retrieval metrics through an index: exact must equal ``retrieval_metrics``; approximate must
stay close to it, and the metric arithmetic must match a plain-loop reference on given lists."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _retrieval_helpers import clustered

from rankedlist.evaluation import retrieval_metrics
from rankedlist.retrieval import EmbeddingIndex, approximate_retrieval_metrics
from rankedlist.retrieval.approximate_evaluation import metrics_from_neighbors

KS = (1, 2, 4, 8, 16)


def assert_same_metrics(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if key.startswith("recall@") or key == "lone_queries":
            assert got[key] == want[key], key  # counts over the same queries: exactly equal
        else:
            assert math.isclose(got[key], want[key], rel_tol=1e-12), key


@pytest.fixture(scope="module")
def embeddings():
    x, labels = clustered(3000, 16, seed=3)
    x[10] = x[11]  # exact duplicates: ties that must be broken by the lower row
    x[12] = x[11]
    labels[2999] = labels.max() + 1  # a lone query
    return x, labels


def test_exact_method_equals_retrieval_metrics(embeddings):
    x, labels = embeddings
    want = retrieval_metrics(x, labels, ks=KS)
    assert want["lone_queries"] >= 1
    assert_same_metrics(approximate_retrieval_metrics(x, labels, method="exact", ks=KS), want)


def test_exact_method_equals_retrieval_metrics_with_a_gallery(embeddings):
    x, labels = embeddings
    q, ql, g, gl = x[:800], labels[:800], x[800:], labels[800:]
    want = retrieval_metrics(q, ql, g, gl, ks=KS)
    got = approximate_retrieval_metrics(q, ql, g, gl, method="exact", ks=KS)
    assert_same_metrics(got, want)


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_metrics_stay_close_to_the_exact_ones(embeddings, method):
    x, labels = embeddings
    want = retrieval_metrics(x, labels, ks=KS)
    got = approximate_retrieval_metrics(x, labels, method=method, ks=KS)
    assert got["lone_queries"] == want["lone_queries"]
    for key in want:
        assert abs(got[key] - want[key]) <= 0.05, (key, got[key], want[key])
    if method == "ivf":  # scanning every list finds every row: (nearly) the exact metrics,
        # only the last bits of its similarities differ from the exact search's products
        exhaustive = approximate_retrieval_metrics(
            x, labels, method="ivf", ks=KS, nlist=64, nprobe=64
        )
        for key in want:
            assert abs(exhaustive[key] - want[key]) <= 2e-3, key


def test_index_evaluate_goes_through_its_own_method(embeddings):
    x, labels = embeddings
    names = [str(i) for i in range(len(x))]
    index = EmbeddingIndex(x, names, labels, method="ivf", nlist=64, nprobe=2)
    via_index = index.evaluate(ks=KS)
    direct = approximate_retrieval_metrics(x, labels, method="ivf", ks=KS, nlist=64, nprobe=2)
    assert via_index == direct
    assert index.evaluate(ks=KS, nprobe=64) == approximate_retrieval_metrics(
        x, labels, method="ivf", ks=KS, nlist=64, nprobe=64
    )
    exact = EmbeddingIndex(x, names, labels, method="exact").evaluate(ks=KS)
    assert_same_metrics(exact, retrieval_metrics(x, labels, ks=KS))


def _reference(lists, q_lab, g_lab, ks, same_set):
    """Plain loops over given ranked lists (row -1: not returned)."""
    sums, valid = {f"recall@{k}": 0.0 for k in ks}, 0
    sums.update(r_precision=0.0, **{"map@r": 0.0})
    for i, row in enumerate(lists):
        r = sum(g_lab[j] == q_lab[i] for j in range(len(g_lab)) if not (same_set and j == i))
        if r == 0:
            continue
        valid += 1
        rel = [j >= 0 and g_lab[j] == q_lab[i] for j in row]
        for k in ks:
            sums[f"recall@{k}"] += any(rel[:k])
        sums["r_precision"] += sum(rel[:r]) / r
        precisions = [sum(rel[: p + 1]) / (p + 1) for p in range(r) if rel[p]]
        sums["map@r"] += sum(precisions) / r
    return {key: value / valid for key, value in sums.items()}


def test_metric_arithmetic_matches_plain_loops():
    rng = np.random.default_rng(0)
    g_lab = rng.integers(0, 5, 40)
    q_lab = g_lab.copy()
    lists = np.stack([rng.permutation([j for j in range(40) if j != i])[:12] for i in range(40)])
    lists[::3, -2:] = -1  # places the index could not fill

    def search(rows, length):
        assert length == min(39, max(4, int(np.bincount(g_lab).max()) - 1))
        return lists[rows, :length]

    got = metrics_from_neighbors(search, q_lab, g_lab, (1, 2, 4), same_set=True)
    length = min(39, max(4, int(np.bincount(g_lab).max()) - 1))
    want = _reference(lists[:, :length], q_lab, g_lab, (1, 2, 4), same_set=True)
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-12), key
    assert got["lone_queries"] == 0


def test_inputs_are_checked_like_the_exact_metrics(embeddings):
    x, labels = embeddings
    with pytest.raises(ValueError, match="Recall@5000 asks for more neighbours"):
        approximate_retrieval_metrics(x, labels, method="ivf", ks=(5000,))
    with pytest.raises(ValueError, match="nprobe does not apply to the hnsw index method"):
        approximate_retrieval_metrics(x, labels, method="hnsw", nprobe=4)
    with pytest.raises(ValueError, match="unknown index method"):
        approximate_retrieval_metrics(x, labels, method="lsh")
