"""Recall@K, R-Precision and MAP@R measured through an approximate index.

An approximate index (ivf, hnsw) answers some queries with a list that misses true neighbours;
:func:`approximate_retrieval_metrics` scores those lists with the definitions of
:func:`rankedlist.evaluation.retrieval_metrics`, so the difference between the two is what the
approximation costs on real embeddings:

* a query's relevant items are the gallery items of its class, its own item excluded by index
  when the query set is the gallery; R is their number; queries with R = 0 are left out and
  counted in ``lone_queries``;
* each query gets one ranked list of L = max(max K, max R) rows (fewer retrievable rows cut
  it), most similar first, ties by the lower row (the exact method gives exactly the lists of
  the evaluation, so its metrics equal ``retrieval_metrics``'s);
* Recall@K: the list's first relevant row is among its first K; R-Precision: relevant rows
  among the first R, over R; MAP@R: the mean over the first R places of precision@i at each
  relevant place, over R. A row the index did not return counts as not retrieved.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["approximate_retrieval_metrics", "metrics_from_neighbors"]

_CHUNK = 4096  # queries per search: bounds the (chunk, L) lists in memory


def metrics_from_neighbors(
    search: Callable[[np.ndarray, int], np.ndarray],
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int],
    same_set: bool,
) -> dict[str, float | int]:
    """The metrics of the ranked lists that ``search(query_rows, L)`` returns.

    Args:
        search: ``(rows of the queries, L) -> (len(rows), L)`` int gallery rows, best first,
            -1 where the index returned nothing; with ``same_set`` a query's own row must be
            left out already.
        query_labels, gallery_labels: integer labels (the same array when ``same_set``).
        ks: the Recall@K cut-offs, each at most the number of retrievable rows.
        same_set: the queries are the gallery (own item excluded from the relevant ones).
    """
    q_lab = np.asarray(query_labels, dtype=np.int64)
    g_lab = np.asarray(gallery_labels, dtype=np.int64)
    _, inverse = np.unique(np.concatenate([q_lab, g_lab]), return_inverse=True)
    q_ids = inverse[: len(q_lab)]
    g_ids = q_ids if same_set else inverse[len(q_lab) :]
    counts = np.bincount(g_ids, minlength=int(inverse.max()) + 1)
    num_rel = counts[q_ids] - int(same_set)
    valid = np.flatnonzero(num_rel > 0)
    available = len(g_lab) - int(same_set)
    sums = dict.fromkeys([f"recall@{k}" for k in ks] + ["r_precision", "map@r"], 0.0)
    if valid.size:
        length = min(available, max(max(ks), int(num_rel[valid].max())))
        for start in range(0, valid.size, _CHUNK):
            rows = valid[start : start + _CHUNK]
            found = np.asarray(search(rows, length))
            r = num_rel[rows]
            rel = (found >= 0) & (g_ids[np.maximum(found, 0)] == q_ids[rows, None])
            first = np.where(rel.any(1), rel.argmax(1), length)
            for k in ks:
                sums[f"recall@{k}"] += float(np.count_nonzero(first < k))
            place = np.arange(1, length + 1)
            hits = (rel & (place[None, :] <= r[:, None])).astype(np.float64)
            sums["r_precision"] += float((hits.sum(1) / r).sum())
            sums["map@r"] += float(((np.cumsum(hits, 1) / place * hits).sum(1) / r).sum())
    out: dict[str, float | int] = {}
    if not valid.size:
        warnings.warn(
            "no query has a relevant gallery item (all queries are lone): metrics are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    for key, total in sums.items():
        out[key] = total / valid.size if valid.size else math.nan
    out["lone_queries"] = int(len(q_lab) - valid.size)
    return out


def approximate_retrieval_metrics(
    query: Any,
    query_labels: Any,
    gallery: Any = None,
    gallery_labels: Any = None,
    method: str = "ivf",
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    nprobe: int | None = None,
    ef: int | None = None,
    **build_params: Any,
) -> dict[str, float | int]:
    """Recall@K, R-Precision and MAP@R of ``query`` against ``gallery`` through an index.

    The index (``method``: ``"ivf"``, ``"hnsw"``, ``"exact"`` or ``"auto"``) is built over
    ``gallery`` (or the query set itself, each query's own item excluded by index) exactly as
    ``rankedlist index build`` builds it, then searched with ``nprobe`` / ``ef`` (default: the
    index's own setting). Same inputs, definitions and result keys as
    :func:`rankedlist.evaluation.retrieval_metrics`; with ``method="exact"`` the same numbers.

    Args:
        query, query_labels, gallery, gallery_labels, ks: as for ``retrieval_metrics``.
        method: the index method.
        nprobe: ivf lists scanned per query; ef: hnsw candidates explored per query.
        **build_params: the method's build parameters (ivf ``nlist``, ``training_sample``,
            ``seed``; hnsw ``M``, ``ef_construction``).

    Returns:
        ``{"recall@K": ..., "r_precision": ..., "map@r": ..., "lone_queries": int}``.
    """
    import torch

    from rankedlist.evaluation._inputs import check_ks, prepare
    from rankedlist.evaluation.nearest_neighbors import faiss_search
    from rankedlist.retrieval.index_methods import SearchMethod

    problem = prepare(query, query_labels, gallery, gallery_labels)
    ks = check_ks(ks, problem.num_gallery)
    q = np.ascontiguousarray(problem.query.cpu().numpy())
    g = q if problem.same_set else np.ascontiguousarray(problem.gallery.cpu().numpy())
    built = SearchMethod.build(g, method, nprobe=nprobe, ef=ef, **build_params)
    setting = built.search_setting(nprobe, ef)
    same = problem.same_set

    def search(rows: np.ndarray, length: int) -> np.ndarray:
        own = rows if same else None
        if not built.approximate:  # the evaluation's own exact, stable lists
            own_t = None if own is None else torch.from_numpy(own)
            return faiss_search(torch.from_numpy(q[rows]), torch.from_numpy(g), length, own_t)[
                1
            ].numpy()
        return built.neighbors(q[rows], g, length, setting, own, complete=False)[1]

    labels = problem.query_ids
    return metrics_from_neighbors(
        search, labels, labels if same else problem.gallery_ids, ks, same_set=same
    )
