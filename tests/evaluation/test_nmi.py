"""nmi: scikit-learn's NMI of the same seeded k-means assignment, for both k-means back ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from rankedlist.evaluation import cluster_assignments, nmi


def blobs(n_classes, per_class, dim, noise, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    x = rng.standard_normal((n_classes, dim))[labels] + noise * rng.standard_normal(
        (labels.shape[0], dim)
    )
    return x.astype(np.float32), labels


@pytest.mark.parametrize("method", ["sklearn", "faiss"])
def test_nmi_is_sklearn_score_of_the_assignment(method):
    x, y = blobs(12, 15, 16, noise=0.9, seed=0)
    clusters = cluster_assignments(x, 12, seed=3, method=method)
    want = normalized_mutual_info_score(y, clusters, average_method="arithmetic")
    assert nmi(x, y, seed=3, method=method) == pytest.approx(want, abs=1e-12)
    assert 0.3 < want < 1.0


def test_sklearn_path_equals_kmeans_run_directly():
    x, y = blobs(10, 12, 8, noise=0.8, seed=1)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    direct = KMeans(n_clusters=10, n_init=1, random_state=5).fit_predict(xn)
    want = normalized_mutual_info_score(y, direct)
    got = nmi(torch.from_numpy(x), torch.from_numpy(y), seed=5, method="sklearn")
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("method", ["sklearn", "faiss"])
def test_separated_clusters_give_one_and_runs_repeat(method):
    x, y = blobs(6, 20, 32, noise=0.05, seed=2)
    if method == "sklearn":  # k-means++ finds well separated clusters
        assert nmi(x, y, method=method) == pytest.approx(1.0)
    else:  # faiss starts from random points, two may share a class: a local optimum
        assert 0.8 < nmi(x, y, method=method) <= 1.0
    a = cluster_assignments(x, 6, seed=11, method=method)
    b = cluster_assignments(x, 6, seed=11, method=method)
    np.testing.assert_array_equal(a, b)  # seeded: repeated runs agree


def test_faiss_iteration_budget_is_bounded():
    x, y = blobs(5, 10, 8, noise=0.3, seed=4)
    # Explicit max_iter is honoured; faiss with one iteration still returns a valid partition.
    c = cluster_assignments(x, 5, method="faiss", max_iter=1)
    assert c.shape == (50,) and c.min() >= 0 and c.max() < 5


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, y: nmi(x, y[:-1]), ValueError, "same length"),
        (lambda x, y: nmi(x[:, 0], y), ValueError, "2-D"),
        (lambda x, y: nmi(x * np.nan, y), ValueError, "NaN"),
        (lambda x, y: nmi(x, y.astype(float)), TypeError, "integers"),
        (lambda x, y: nmi(x, y, method="hdbscan"), ValueError, "method"),
        (lambda x, y: nmi(x, y, n_init=3), TypeError, "n_init"),
        (lambda x, y: cluster_assignments(x, 0), ValueError, "num_clusters"),
        (lambda x, y: cluster_assignments(x, 1000), ValueError, "num_clusters"),
    ],
)
def test_bad_input_raises(call, error, match):
    x, y = blobs(3, 5, 4, noise=0.1, seed=0)
    with pytest.raises(error, match=match):
        call(x, y)
