"""NMI of a seeded k-means clustering against the class labels.

k-means runs on the L2-normalised embeddings with k = the number of classes, then
``sklearn.metrics.normalized_mutual_info_score`` (arithmetic mean) compares clusters and labels.

Which k-means: ``faiss.Kmeans`` (seeded random initialisation, BLAS assignments, the choice of
PML's AccuracyCalculator too) by default, because scikit-learn's ``KMeans`` is 10-15x slower on
the CUB size (k-means++ and up to 300 iterations; measured 28 s vs 2 s on 2 cores) and out of
reach on SOP. faiss has no convergence test, so the number of Lloyd iterations is fixed by the
shapes: 50 (measured on CUB-like data, 20 iterations were visibly unconverged), capped so
that iterations x 2 N k D stays under 3 TFLOP: each iteration is an N x k x D product (0.7
TFLOP on SOP's 60,502 x 11,316 x 512), so SOP gets 4 iterations (about 40 s on 2 cores).
The bound depends only on the shapes, so results stay reproducible; ``max_iter`` overrides
it and ``method="sklearn"`` selects scikit-learn (k-means++, one seeded run).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rankedlist.evaluation._inputs import ArrayLike, as_embeddings, as_labels

# faiss Lloyd iterations are capped so that iterations x 2 N k D stays under this many flops.
FAISS_FLOP_BUDGET = 3e12
FAISS_MAX_ITER = 50


def cluster_assignments(
    embeddings: ArrayLike,
    num_clusters: int,
    seed: int = 0,
    method: str = "auto",
    max_iter: int | None = None,
) -> np.ndarray:
    """Seeded k-means cluster id (int64, shape (N,)) of each L2-normalised embedding.

    Args:
        embeddings: (N, D) tensor or array.
        num_clusters: k, in [1, N].
        seed: random seed of the initialisation.
        method: ``"faiss"``, ``"sklearn"`` or ``"auto"`` (faiss).
        max_iter: Lloyd iterations; default 300 for sklearn (it stops at convergence) and
            ``min(50, 3e12 / (2 N k D))`` (at least 2) for faiss.
    """
    x = as_embeddings(embeddings, "embeddings").cpu().numpy()
    return _kmeans(x, num_clusters, seed, method, max_iter)


def _kmeans(
    x: np.ndarray, num_clusters: int, seed: int, method: str, max_iter: int | None
) -> np.ndarray:
    """k-means on an already normalised float32 array (see ``cluster_assignments``)."""
    n, d = x.shape
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, int | np.integer):
        raise TypeError(f"num_clusters must be an int, got {type(num_clusters).__name__}")
    if not 1 <= num_clusters <= n:
        raise ValueError(
            f"num_clusters must be in [1, {n}] (the number of points), got {num_clusters}"
        )
    if method not in ("auto", "sklearn", "faiss"):
        raise ValueError(f"method must be 'auto', 'sklearn' or 'faiss', got {method!r}")
    if method == "auto":
        method = "faiss"
    if method == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(
            n_clusters=int(num_clusters),
            n_init=1,
            max_iter=max_iter or 300,
            random_state=seed,
        )
        return km.fit_predict(x).astype(np.int64)

    import faiss  # heavy, optional at import time

    if max_iter is None:
        per_iter = 2.0 * n * num_clusters * d
        max_iter = int(min(FAISS_MAX_ITER, max(2, FAISS_FLOP_BUDGET // per_iter)))
    km = faiss.Kmeans(
        d,
        int(num_clusters),
        niter=int(max_iter),
        seed=int(seed),
        nredo=1,
        verbose=False,
        min_points_per_centroid=1,  # few points per class is the normal case here
        max_points_per_centroid=max(256, n),  # never subsample the test set
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def nmi(embeddings: ArrayLike, labels: Any, seed: int = 0, **kmeans_options: Any) -> float:
    """Normalised mutual information between seeded k-means clusters and ``labels``.

    k = the number of distinct labels; ``kmeans_options`` (``method``, ``max_iter``) go to
    :func:`cluster_assignments`. Returns a float in [0, 1].
    """
    from sklearn.metrics import normalized_mutual_info_score

    x = as_embeddings(embeddings, "embeddings")
    y = as_labels(labels, x.shape[0], "labels", "embeddings")
    num_classes = int(np.unique(y).shape[0])
    unknown = set(kmeans_options) - {"method", "max_iter"}
    if unknown:
        raise TypeError(f"unexpected k-means options {sorted(unknown)}: use method, max_iter")
    clusters = _kmeans(
        x.cpu().numpy(),
        num_classes,
        seed,
        kmeans_options.get("method", "auto"),
        kmeans_options.get("max_iter"),
    )
    return float(normalized_mutual_info_score(y, clusters, average_method="arithmetic"))
