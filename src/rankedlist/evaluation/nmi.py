"""NMI of a seeded k-means clustering against the class labels.

k-means runs on the L2-normalised embeddings with k = the number of classes, then
``sklearn.metrics.normalized_mutual_info_score`` (arithmetic mean) compares clusters and labels.

Both back ends run scikit-learn's algorithm: greedy k-means++ seeding (one seeded run; for each
seed ``2 + ln k`` candidates drawn with probability proportional to their squared distance to
the nearest seed so far, the one that lowers the potential most kept), then Lloyd iterations to
convergence. Results are deterministic for a seed, and well separated clusters are found
exactly (NMI 1.0), which one random initialisation does not guarantee.

* ``method="faiss"`` (the default, ``"auto"``): seeding and Lloyd here, on BLAS products; each
  assignment is one faiss ``IndexFlatL2`` search. Lloyd stops when the assignment repeats, when
  the objective (sum of squared distances to the nearest centroid) improves by at most ``tol``
  times itself (default 1e-6), or after ``max_iter`` iterations (default 100). An empty cluster
  takes the point farthest from its centroid.
* ``method="sklearn"``: scikit-learn's ``KMeans`` (``n_init=1``, ``max_iter=300``, its own
  centre-shift ``tol``, default 1e-4); about 2x slower on the CUB shape (5.2 s vs 2.7 s).

Why a tolerance this small: k-means on noisy embeddings crawls across plateaus before it
converges. On clustered random data of the CUB shape, a relative tolerance of 1e-4 stopped after
24 iterations at NMI 0.884 where convergence (50 iterations, where 1e-6 stops too) gives 0.915;
on the Cars shape convergence took up to 97 iterations.

Compute budget of the faiss path: at most ``2 + ln k + max_iter`` products N x k x D. The
seeding costs about ``2 + ln k`` of them (candidates are drawn by rejection sampling from
distances refreshed once per pool of proposals, so it needs no pass over the data per seed),
each Lloyd iteration one. On SOP (60,502 x 11,316 x 512, 0.7 TFLOP a product, about 5 s on 2
cores) that is 11 products for the seeding plus at most 100 iterations (about 10 min). Measured
with ``benchmarks/nmi_convergence.py`` on SOP-shaped clustered data (2 cores): the assignment
repeated after 3 iterations, NMI 0.904 in 100 s (85 s of it the seeding); the previous default
(one random initialisation, 4 iterations) gave 0.870 in 50 s in the same run (2.0x; 2.7x in CPU
time on a busier run). Plain k-means++ (one candidate) would have given 0.870 as well: on such
data the greedy seeding, not the iterations, moves NMI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rankedlist.evaluation._inputs import ArrayLike, as_embeddings, as_labels

#: Default Lloyd iteration budget and relative objective tolerance of the faiss path.
FAISS_MAX_ITER = 100
FAISS_TOL = 1e-6
# scikit-learn's own default tolerance (its centre-shift criterion), for method="sklearn".
SKLEARN_TOL = 1e-4
# Memory of one pool of k-means++ proposals (their float32 distances to every point).
_POOL_BYTES = 128 * 2**20


def cluster_assignments(
    embeddings: ArrayLike,
    num_clusters: int,
    seed: int = 0,
    method: str = "auto",
    max_iter: int | None = None,
    tol: float | None = None,
) -> np.ndarray:
    """Seeded k-means cluster id (int64, shape (N,)) of each L2-normalised embedding.

    Args:
        embeddings: (N, D) tensor or array.
        num_clusters: k, in [1, N].
        seed: random seed of the k-means++ seeding.
        method: ``"faiss"``, ``"sklearn"`` or ``"auto"`` (faiss).
        max_iter: Lloyd iteration budget; default 100 (faiss) or 300 (sklearn).
        tol: convergence tolerance. faiss: stop when the objective improves by at most
            ``tol`` times itself between two iterations (default 1e-6). sklearn: scikit-learn's
            own centre-shift tolerance (default 1e-4).
    """
    x = as_embeddings(embeddings, "embeddings").cpu().numpy()
    return _kmeans(x, num_clusters, seed, method, max_iter, tol)[0]


def _kmeans(
    x: np.ndarray,
    num_clusters: int,
    seed: int,
    method: str,
    max_iter: int | None,
    tol: float | None = None,
) -> tuple[np.ndarray, list[float]]:
    """k-means on an already normalised float32 array (see ``cluster_assignments``).

    Returns the assignment and, for faiss, the objective after each Lloyd assignment step
    (one entry per iteration run; empty for sklearn).
    """
    n = x.shape[0]
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, int | np.integer):
        raise TypeError(f"num_clusters must be an int, got {type(num_clusters).__name__}")
    if not 1 <= num_clusters <= n:
        raise ValueError(
            f"num_clusters must be in [1, {n}] (the number of points), got {num_clusters}"
        )
    if method not in ("auto", "sklearn", "faiss"):
        raise ValueError(f"method must be 'auto', 'sklearn' or 'faiss', got {method!r}")
    if max_iter is not None and (isinstance(max_iter, bool) or int(max_iter) < 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    k = int(num_clusters)
    if method == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(
            n_clusters=k,
            n_init=1,
            max_iter=int(max_iter or 300),
            tol=SKLEARN_TOL if tol is None else float(tol),
            random_state=seed,
        )
        return km.fit_predict(x).astype(np.int64), []

    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    centroids = x[_kmeans_plus_plus(x, k, rng)]
    return _lloyd(
        x,
        centroids,
        FAISS_MAX_ITER if max_iter is None else int(max_iter),
        FAISS_TOL if tol is None else float(tol),
    )


def _sq_distances(c: np.ndarray, c_sq: np.ndarray, x: np.ndarray, sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (float32, (M, N), clipped at 0) of the rows of ``c`` to the
    rows of ``x``, by ``|c|^2 + |x|^2 - 2 c.x`` with the product in BLAS (as faiss does)."""
    out = c @ x.T
    out *= -2.0
    out += c_sq[:, None].astype(np.float32)
    out += sq[None, :].astype(np.float32)
    np.maximum(out, 0.0, out=out)
    return out


def _kmeans_plus_plus(
    x: np.ndarray, k: int, rng: np.random.Generator, n_candidates: int | None = None
) -> np.ndarray:
    """Indices of ``k`` greedy k-means++ seeds (scikit-learn's algorithm): the first uniform;
    for each next one, ``2 + ln k`` candidates drawn with probability proportional to their
    squared distance to the nearest seed so far, of which the one that lowers the potential
    (sum of those distances) most is kept.

    Drawing the candidates needs no pass over the data per seed: proposals are drawn in a pool
    from the distances at the pool's creation (``stale``) and a proposal is accepted with
    probability ``d_now / stale`` (<= 1: seeds only shrink distances). That is rejection
    sampling, so accepted candidates follow the current distribution exactly. One BLAS product
    per pool gives every proposal's distances to all points, from which the potentials and
    ``d_now`` follow in O(N) per candidate.
    """
    n = x.shape[0]
    L = n_candidates or 2 + int(np.log(k))
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    max_pool = max(L, _POOL_BYTES // (4 * n))
    seeds = np.empty(k, dtype=np.int64)
    seeds[0] = rng.integers(n)
    d_now = _sq_distances(x[seeds[:1]], sq[seeds[:1]], x, sq)[0].astype(np.float64)
    d_now[seeds[0]] = 0.0
    filled = 1
    cands: list[tuple[int, np.ndarray]] = []  # accepted candidates of the step: (index, row)
    while filled < k:
        stale = d_now.copy()
        cdf = np.cumsum(stale)
        if not cdf[-1] > 0:  # every point coincides with a seed (duplicates): no mass left
            break
        m = min(max_pool, L * (k - filled) - len(cands))
        props = np.minimum(np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right"), n - 1)
        rows = _sq_distances(x[props], sq[props], x, sq)
        coins = rng.random(m)
        cands = [(i, row.copy()) for i, row in cands]  # keep them, their pool is released
        for j in range(m):
            p = int(props[j])
            if coins[j] * stale[p] >= d_now[p]:
                continue  # rejected: p is nearer to a seed drawn since the pool was made
            cands.append((p, rows[j]))
            if len(cands) < L:
                continue
            pots = [float(np.minimum(d_now, row).sum()) for _, row in cands]
            best, row = cands[int(np.argmin(pots))]
            np.minimum(d_now, row, out=d_now)
            d_now[best] = 0.0
            seeds[filled] = best
            filled += 1
            cands = []
            if filled == k:
                break
    if filled < k:  # fewer distinct points than k: fill with unused points, lowest index first
        unused = np.setdiff1d(np.arange(n), seeds[:filled])
        seeds[filled:] = unused[: k - filled]
    return seeds


def _lloyd(
    x: np.ndarray, centroids: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, list[float]]:
    """Lloyd iterations from ``centroids``: assign (faiss), stop on convergence or budget,
    else move each centroid to its cluster's mean. Returns the last assignment and the
    objective of every assignment step."""
    import faiss  # heavy, optional at import time

    n, d = x.shape
    k = centroids.shape[0]
    index = faiss.IndexFlatL2(d)
    objectives: list[float] = []
    assign = np.zeros(n, dtype=np.int64)
    for it in range(max_iter):
        index.reset()
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        dist, nearest = index.search(x, 1)
        new_assign = nearest[:, 0].astype(np.int64)
        objectives.append(float(dist.sum(dtype=np.float64)))
        unchanged = it > 0 and np.array_equal(new_assign, assign)
        assign = new_assign
        if unchanged or it == max_iter - 1:
            break
        if it > 0 and objectives[-2] - objectives[-1] <= tol * objectives[-1]:
            break
        centroids = _centroids(x, assign, dist[:, 0], k)
    return assign, objectives


def _centroids(x: np.ndarray, assign: np.ndarray, dist: np.ndarray, k: int) -> np.ndarray:
    """Cluster means (float32, (k, D)); an empty cluster takes the point farthest from its
    centroid among clusters that keep at least one other point (``assign`` is updated)."""
    counts = np.bincount(assign, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        for p in np.argsort(-dist, kind="stable"):
            if not empty.size:
                break
            if counts[assign[p]] > 1:
                counts[assign[p]] -= 1
                assign[p], empty = empty[0], empty[1:]
                counts[assign[p]] = 1
    order = np.argsort(assign, kind="stable")
    present = np.flatnonzero(counts)
    starts = np.concatenate(([0], np.cumsum(counts[present])[:-1]))
    sums = np.add.reduceat(x[order], starts, axis=0, dtype=np.float64)
    out = np.zeros((k, x.shape[1]), dtype=np.float32)
    out[present] = sums / counts[present, None]
    return out


def nmi(embeddings: ArrayLike, labels: Any, seed: int = 0, **kmeans_options: Any) -> float:
    """Normalised mutual information between seeded k-means clusters and ``labels``.

    k = the number of distinct labels; ``kmeans_options`` (``method``, ``max_iter``, ``tol``)
    go to :func:`cluster_assignments`. Returns a float in [0, 1].
    """
    from sklearn.metrics import normalized_mutual_info_score

    x = as_embeddings(embeddings, "embeddings")
    y = as_labels(labels, x.shape[0], "labels", "embeddings")
    num_classes = int(np.unique(y).shape[0])
    unknown = set(kmeans_options) - {"method", "max_iter", "tol"}
    if unknown:
        raise TypeError(f"unexpected k-means options {sorted(unknown)}: use method, max_iter, tol")
    clusters, _ = _kmeans(
        x.cpu().numpy(),
        num_classes,
        seed,
        kmeans_options.get("method", "auto"),
        kmeans_options.get("max_iter"),
        kmeans_options.get("tol"),
    )
    return float(normalized_mutual_info_score(y, clusters, average_method="arithmetic"))
