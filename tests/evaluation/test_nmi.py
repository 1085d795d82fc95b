"""nmi: the NMI of a known partition, exact 1.0 on separated clusters for both k-means back ends,
the k-means++ seeding's D^2 distribution, and the faiss path's iteration budget and tolerance."""

from __future__ import annotations

import itertools
import sys

import faiss
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from rankedlist.evaluation import cluster_assignments, nmi

# The package exports the function ``nmi``, which shadows the submodule of the same name.
nmi_module = sys.modules["rankedlist.evaluation.nmi"]


def blobs(n_classes, per_class, dim, noise, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    x = rng.standard_normal((n_classes, dim))[labels] + noise * rng.standard_normal(
        (labels.shape[0], dim)
    )
    return x.astype(np.float32), labels


def separated(n_classes, per_class, noise, seed):
    """Tight clusters around orthogonal directions: every within-class distance is far below
    every between-class one, so the k-means optimum is the class partition."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    x = np.eye(n_classes)[labels] + noise * rng.standard_normal((labels.shape[0], n_classes))
    return x.astype(np.float32), labels


def nmi_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """2 I(a; b) / (H(a) + H(b)) from the contingency table, in float64."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum()
    return float(2 * mi / (-(pa * np.log(pa)).sum() - (pb * np.log(pb)).sum()))


def inertia(x: np.ndarray, clusters: np.ndarray) -> float:
    """k-means objective of a partition: squared distances to the cluster means (float64)."""
    xn = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    return float(
        sum(((xn[clusters == c] - xn[clusters == c].mean(0)) ** 2).sum() for c in set(clusters))
    )


@pytest.mark.parametrize("method", ["sklearn", "faiss"])
@pytest.mark.parametrize("seed", [0, 3])
def test_nmi_of_a_known_partition(method, seed):
    # Four tight clusters of 10, so k-means (k = 4 classes) must return exactly them; the labels
    # cut across them, so the NMI is that of the cluster partition against the labels, here
    # computed by hand from the contingency table (not with scikit-learn).
    x, cluster = separated(4, 10, noise=0.01, seed=seed)
    labels = np.concatenate([[0] * 8 + [1] * 2, [1] * 7 + [2] * 3, [2] * 10, [3] * 6 + [0] * 4])
    want = nmi_by_hand(labels, cluster)
    assert 0.5 < want < 0.9
    assert nmi(x, labels, seed=seed, method=method) == pytest.approx(want, abs=1e-12)
    # and nmi() is scikit-learn's score of cluster_assignments() with the same seed
    clusters = cluster_assignments(x, 4, seed=seed, method=method)
    assert normalized_mutual_info_score(labels, clusters) == pytest.approx(want, abs=1e-12)


def test_sklearn_path_equals_kmeans_run_directly():
    x, y = blobs(10, 12, 8, noise=0.8, seed=1)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    direct = KMeans(n_clusters=10, n_init=1, random_state=5).fit_predict(xn)
    want = normalized_mutual_info_score(y, direct)
    got = nmi(torch.from_numpy(x), torch.from_numpy(y), seed=5, method="sklearn")
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("method", ["auto", "faiss", "sklearn"])
def test_twenty_separated_clusters_give_exactly_one(method):
    # Gaussian class centres in 32-d, some pairs much closer than others: one random
    # initialisation (the old faiss path) and even plain k-means++ (one candidate per seed) land
    # in a local minimum for some seeds here; greedy k-means++ must not.
    for data_seed in range(3):
        x, y = blobs(20, 10, 32, noise=0.05, seed=data_seed)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = np.linalg.norm(xn[:, None] - xn[None], axis=-1)
        same = y[:, None] == y[None]
        assert d[~same].min() > 8 * d[same].max()  # perfectly separated
        for seed in range(8):
            assert nmi(x, y, seed=seed, method=method) == 1.0, (data_seed, seed)
    a = cluster_assignments(x, 20, seed=11, method=method)
    b = cluster_assignments(x, 20, seed=11, method=method)
    np.testing.assert_array_equal(a, b)  # seeded: repeated runs agree


def test_kmeans_plus_plus_draws_d2_distributed_seeds():
    # With one candidate per step the seeding is plain k-means++: the first seed uniform, each
    # next one drawn with probability proportional to its squared distance to the nearest seed.
    # The pooled rejection sampler must reproduce that joint law exactly; compare the frequency
    # of every ordered triple of 5 points on a line with the enumerated probability.
    x = np.zeros((5, 2), dtype=np.float32)
    x[:, 0] = [0.0, 1.0, 3.0, 4.0, 8.0]
    want = {}
    for t in itertools.permutations(range(5), 3):
        p = 1.0 / 5
        for step in (1, 2):
            d2 = ((x[:, None, :] - x[None, list(t[:step]), :]) ** 2).sum(-1).min(1)
            p *= d2[t[step]] / d2.sum()
        want[t] = p
    runs = 6000
    got = dict.fromkeys(want, 0)
    for s in range(runs):
        seeds = nmi_module._kmeans_plus_plus(x, 3, np.random.default_rng(s), n_candidates=1)
        got[tuple(int(i) for i in seeds)] += 1
    assert sum(got.values()) == runs
    for t, p in want.items():  # within 4.5 standard deviations of the binomial count
        assert abs(got[t] - runs * p) <= 4.5 * np.sqrt(runs * p * (1 - p)) + 1, (t, got[t], p)


class CountingIndex(faiss.IndexFlatL2):
    """IndexFlatL2 that counts its searches: one per Lloyd assignment step."""

    searches = 0

    def search(self, *args, **kwargs):
        CountingIndex.searches += 1
        return super().search(*args, **kwargs)


def lloyd_steps(monkeypatch, x, k, **options) -> tuple[int, np.ndarray]:
    """Number of Lloyd assignment steps of the faiss path, and its clusters."""
    monkeypatch.setattr(faiss, "IndexFlatL2", CountingIndex)
    CountingIndex.searches = 0
    clusters = cluster_assignments(x, k, method="faiss", **options)
    return CountingIndex.searches, clusters


def test_faiss_iteration_budget_and_tolerance_are_honoured(monkeypatch):
    x, _ = blobs(12, 15, 16, noise=0.9, seed=0)
    # tol=0: only the budget (or assignments that stop changing) ends the iterations.
    assert lloyd_steps(monkeypatch, x, 12, max_iter=3, tol=0.0)[0] == 3
    assert lloyd_steps(monkeypatch, x, 12, max_iter=1, tol=0.0)[0] == 1
    converged_steps, converged = lloyd_steps(monkeypatch, x, 12, tol=0.0)
    assert 3 < converged_steps < nmi_module.FAISS_MAX_ITER  # converged: assignments repeat
    # A huge tolerance stops at the first comparison: two assignment steps.
    huge_steps, huge = lloyd_steps(monkeypatch, x, 12, tol=1.0)
    assert huge_steps == 2
    np.testing.assert_array_equal(huge, lloyd_steps(monkeypatch, x, 12, max_iter=2, tol=0.0)[1])
    # The default tolerance stops before the assignments stop changing, after more than 2 steps.
    default_steps, _ = lloyd_steps(monkeypatch, x, 12)
    assert 2 < default_steps <= converged_steps
    # One step is the nearest-seed partition, worse (higher objective) than the converged one.
    one = cluster_assignments(x, 12, method="faiss", max_iter=1)
    assert inertia(x, one) > inertia(x, converged) * 1.01


def test_sklearn_path_honours_max_iter():
    x, _ = blobs(12, 15, 16, noise=0.9, seed=0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    direct = KMeans(n_clusters=12, n_init=1, max_iter=1, random_state=2).fit_predict(xn)
    one = cluster_assignments(x, 12, seed=2, method="sklearn", max_iter=1)
    np.testing.assert_array_equal(one, direct)
    assert inertia(x, one) > inertia(x, cluster_assignments(x, 12, seed=2, method="sklearn"))


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")  # scikit-learn's, expected
@pytest.mark.parametrize("method", ["sklearn", "faiss"])
def test_duplicate_points_with_more_clusters_than_distinct_points(method):
    # 3 distinct points, 5 classes: k-means++ runs out of D^2 mass; still a valid partition.
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)
    y = np.arange(12) % 5
    clusters = cluster_assignments(x, 5, method=method)
    assert clusters.shape == (12,) and clusters.min() >= 0 and clusters.max() < 5
    assert 0.0 <= nmi(x, y, method=method) <= 1.0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, y: nmi(x, y[:-1]), ValueError, "same length"),
        (lambda x, y: nmi(x[:, 0], y), ValueError, "2-D"),
        (lambda x, y: nmi(x * np.nan, y), ValueError, "NaN"),
        (lambda x, y: nmi(x, y.astype(float)), TypeError, "integers"),
        (lambda x, y: nmi(x, y, method="hdbscan"), ValueError, "method"),
        (lambda x, y: nmi(x, y, n_init=3), TypeError, "n_init"),
        (lambda x, y: nmi(x, y, max_iter=0), ValueError, "max_iter"),
        (lambda x, y: nmi(x, y, tol=-1.0), ValueError, "tol"),
        (lambda x, y: cluster_assignments(x, 0), ValueError, "num_clusters"),
        (lambda x, y: cluster_assignments(x, 1000), ValueError, "num_clusters"),
    ],
)
def test_bad_input_raises(call, error, match):
    x, y = blobs(3, 5, 4, noise=0.1, seed=0)
    with pytest.raises(error, match=match):
        call(x, y)
