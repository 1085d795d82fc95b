"""Where a model fails, computed on every test query by the exact evaluation behind
``metrics.json``: each query's average precision (its MAP@R term) and first-correct rank,
per-class Recall@1 and MAP@R, and the class pairs whose images rank each other first.

The per-query values come from :func:`rankedlist.evaluation.retrieval_metrics` itself (its
``per_query`` output), so their means are the report's headline numbers, not a second,
approximate computation. Only the nearest neighbour of the queries whose first neighbour is
wrong is searched again (the evaluation does not keep it), with the evaluation's exact
neighbour search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rankedlist.report.neighbors import query_and_gallery_rows, top_k_neighbors


@dataclass(frozen=True)
class ClassPair:
    """Two classes whose images rank each other's first: ``a_to_b`` queries of class ``a`` have
    a class-``b`` image as their nearest neighbour, ``b_to_a`` the other way round."""

    a: int
    b: int
    a_to_b: int
    b_to_a: int

    @property
    def count(self) -> int:
        return self.a_to_b + self.b_to_a


@dataclass(frozen=True)
class FailureAnalysis:
    """Per-query and per-class results of one exact evaluation (rows index the test embeddings).

    ``query_rows``: the queries that have a relevant gallery item (ascending), with their
    ``average_precision``, ``first_relevant_rank`` (0-based; exact where it is 0, which is all
    Recall@1 needs: :func:`first_correct_ranks` counts it exactly) and ``top1_rows`` (the nearest
    gallery row of those whose first neighbour is wrong, ``-1`` for the others). ``metrics``:
    the evaluation's summary of the same call (fractions). ``class_ids``, ``class_queries``,
    ``class_recall_at_1``, ``class_map_at_r``: per class with at least one such query.
    ``confused_pairs``: the most confused class pairs, most confused first.
    """

    query_rows: np.ndarray
    average_precision: np.ndarray
    first_relevant_rank: np.ndarray
    top1_rows: np.ndarray
    metrics: dict[str, float | int]
    class_ids: np.ndarray
    class_queries: np.ndarray
    class_recall_at_1: np.ndarray
    class_map_at_r: np.ndarray
    confused_pairs: list[ClassPair]

    def hardest(self, count: int) -> np.ndarray:
        """Indices (into ``query_rows``) of the ``count`` lowest-AP queries, lowest first (ties
        by row)."""
        return np.lexsort((self.query_rows, self.average_precision))[:count]


def analyse_failures(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: tuple[int, ...] = (1,),
    query_count: int | None = None,
    max_pairs: int = 20,
) -> FailureAnalysis:
    """Evaluate every query exactly and gather the per-query and per-class failure statistics.

    Args:
        embeddings: ``N x D`` test embeddings (queries then gallery when ``query_count``).
        labels: their ``N`` integer labels.
        ks: the Recall@K cut-offs of the summary (those the gallery allows).
        query_count: ``None`` (each row searched against all others) or the number of leading
            query rows (In-Shop).
        max_pairs: how many confused class pairs to keep (most confused first).
    """
    from rankedlist.evaluation import retrieval_metrics

    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    q_rows, g_rows = query_and_gallery_rows(len(labels), query_count)
    usable = len(g_rows) - (1 if query_count is None else 0)
    if usable < 1:
        raise ValueError(f"the report needs at least two test images to search, got {len(labels)}")
    ks = tuple(k for k in ks if k <= usable) or (1,)
    per_query: dict[str, np.ndarray] = {}
    gallery = () if query_count is None else (embeddings[g_rows], labels[g_rows])
    metrics = retrieval_metrics(
        embeddings[q_rows], labels[q_rows], *gallery, ks=ks, per_query=per_query
    )
    rows = per_query["rows"] + q_rows[0]
    rank = per_query["first_relevant_rank"]
    ap = per_query["average_precision"]
    top1 = _nearest_rows(embeddings, labels, rows, rank, query_count)
    class_ids, inverse = np.unique(labels[rows], return_inverse=True)
    counts = np.bincount(inverse, minlength=len(class_ids))
    hits = np.bincount(inverse, weights=(rank == 0).astype(np.float64), minlength=len(class_ids))
    ap_sum = np.bincount(inverse, weights=ap, minlength=len(class_ids))
    return FailureAnalysis(
        query_rows=rows,
        average_precision=ap,
        first_relevant_rank=rank,
        top1_rows=top1,
        metrics=dict(metrics),
        class_ids=class_ids,
        class_queries=counts,
        class_recall_at_1=hits / counts,
        class_map_at_r=ap_sum / counts,
        confused_pairs=_confused_pairs(
            labels[rows], np.where(top1 >= 0, labels[top1], -1), max_pairs
        ),
    )


def _nearest_rows(
    embeddings: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    rank: np.ndarray,
    query_count: int | None,
) -> np.ndarray:
    """Each wrong query's nearest gallery row (``-1`` where the first neighbour is right: its
    class is the query's, which is all the pair counts need, and the search is saved)."""
    top1 = np.full(len(rows), -1, dtype=np.int64)
    wrong = np.flatnonzero(rank > 0)
    if len(wrong):
        _, found = top_k_neighbors(embeddings, rows[wrong], 1, query_count=query_count)
        top1[wrong] = found[:, 0]
    return top1


def _confused_pairs(true: np.ndarray, nearest: np.ndarray, max_pairs: int) -> list[ClassPair]:
    """The unordered class pairs counted most often as (query class, nearest neighbour's class)
    over the queries whose nearest neighbour is of another class."""
    keep = (nearest >= 0) & (nearest != true)
    true, nearest = true[keep], nearest[keep]
    if len(true) == 0:
        return []
    lo, hi = np.minimum(true, nearest), np.maximum(true, nearest)
    span = int(hi.max()) + 1
    keys, counts = np.unique(lo * span + hi, return_counts=True)
    forward = true < nearest  # a query of the lower class ranked the higher one first
    fwd_keys, fwd_counts = np.unique((lo * span + hi)[forward], return_counts=True)
    fwd = dict(zip(fwd_keys.tolist(), fwd_counts.tolist(), strict=True))
    order = np.lexsort((keys, -counts))[:max_pairs]
    pairs = []
    for i in order:
        key, total = int(keys[i]), int(counts[i])
        a, b = divmod(key, span)
        pairs.append(ClassPair(a=a, b=b, a_to_b=fwd.get(key, 0), b_to_a=total - fwd.get(key, 0)))
    return pairs


def first_correct_ranks(
    embeddings: np.ndarray, labels: np.ndarray, rows: np.ndarray, query_count: int | None
) -> np.ndarray:
    """The exact 0-based rank of each query row's first same-class gallery item, counted over
    its whole row of cosines (ties by gallery row, as the evaluation ranks); ``-1`` for none."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    _, g_rows = query_and_gallery_rows(len(labels), query_count)
    out = np.full(len(rows), -1, dtype=np.int64)
    for i, q in enumerate(np.asarray(rows, dtype=np.int64)):
        sims = embeddings[g_rows] @ embeddings[q]
        own = g_rows == q
        relevant = (labels[g_rows] == labels[q]) & ~own
        if not relevant.any():
            continue
        best = sims[relevant].max()
        first = int(np.flatnonzero(relevant & (sims == best))[0])
        ahead = (sims > best) | ((sims == best) & (np.arange(len(g_rows)) < first))
        out[i] = int(np.count_nonzero(ahead & ~own))
    return out
