"""Nearest neighbours of a few queries for the retrieval grid, and the right/wrong decision.

Rows are always indices into the full test ``embeddings`` (so ``dataset.load_image(row)`` shows the
right picture): with ``query_count=None`` the gallery is every row and a query's own row is excluded
by index (never by dropping the first neighbour: duplicates and ties make that wrong); with
``query_count=q`` (In-Shop) rows ``[0, q)`` are queries and rows ``[q, N)`` the gallery.
"""

from __future__ import annotations

import numpy as np


def _search(query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours: ``(similarities, gallery indices)``, the evaluation's search."""
    # Imported here: the evaluation brings torch and faiss, which `import rankedlist` must not.
    from rankedlist.evaluation import nearest_neighbors

    sims, idx = nearest_neighbors(query, gallery, k, exclude_self=False)
    return np.asarray(sims, dtype=np.float32), np.asarray(idx, dtype=np.int64)


def query_and_gallery_rows(n: int, query_count: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The rows that are queries and the rows that form the gallery."""
    if query_count is None:
        rows = np.arange(n)
        return rows, rows
    if not isinstance(query_count, int | np.integer) or not 0 < query_count < n:
        raise ValueError(
            f"query_count must be an int in [1, {n - 1}] (the first query_count rows are queries, "
            f"the rest the gallery) or None (the gallery is the query set), got {query_count!r}"
        )
    return np.arange(query_count), np.arange(query_count, n)


def top_k_neighbors(
    embeddings: np.ndarray, query_rows: np.ndarray, k: int, query_count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery rows of each query row, self excluded by index.

    Args:
        embeddings: ``N x D`` L2-normalised test embeddings.
        query_rows: rows of ``embeddings`` to use as queries (must be query rows).
        k: neighbours per query; fewer columns come back when the gallery is smaller.
        query_count: ``None`` (gallery = all rows, self excluded) or the number of leading
            query rows.

    Returns:
        ``(similarities, rows)``, both ``len(query_rows) x k'``: rows index ``embeddings``.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    q_all, g_rows = query_and_gallery_rows(len(embeddings), query_count)
    if query_rows.size and (query_rows.min() < 0 or query_rows.max() >= len(q_all)):
        raise ValueError(f"query rows must lie in [0, {len(q_all)}), got {query_rows.tolist()}")
    self_in_gallery = query_count is None
    k = min(int(k), len(g_rows) - (1 if self_in_gallery else 0))
    if k < 1 or query_rows.size == 0:
        return np.zeros((len(query_rows), 0), np.float32), np.zeros((len(query_rows), 0), np.int64)
    # Ask for one extra when the query is in the gallery, then drop its own row by index.
    fetch = k + 1 if self_in_gallery else k
    sims, idx = _search(embeddings[query_rows], embeddings[g_rows], fetch)
    rows = g_rows[idx]
    if not self_in_gallery:
        return sims[:, :k], rows[:, :k]
    out_s = np.empty((len(query_rows), k), np.float32)
    out_r = np.empty((len(query_rows), k), np.int64)
    for i, q in enumerate(query_rows):
        keep = rows[i] != q
        if keep.all():  # self not among the top k+1 (ties): the extra one is simply cut
            keep[-1] = False
        out_s[i], out_r[i] = sims[i][keep][:k], rows[i][keep][:k]
    return out_s, out_r


def neighbor_matches(
    labels: np.ndarray, query_rows: np.ndarray, neighbor_rows: np.ndarray
) -> np.ndarray:
    """``True`` where a neighbour has the query's class (drawn green), else ``False`` (red)."""
    labels = np.asarray(labels)
    return labels[np.asarray(neighbor_rows)] == labels[np.asarray(query_rows)][:, None]


def pick_queries(
    labels: np.ndarray, n_queries: int, query_count: int | None = None, seed: int = 0
) -> np.ndarray:
    """``n_queries`` seeded random query rows, preferring queries with a relevant gallery item."""
    labels = np.asarray(labels)
    q_rows, g_rows = query_and_gallery_rows(len(labels), query_count)
    gallery_counts: dict[object, int] = {}
    for lab in labels[g_rows].tolist():
        gallery_counts[lab] = gallery_counts.get(lab, 0) + 1
    own = 1 if query_count is None else 0  # the query itself does not count as relevant
    answerable = np.array(
        [r for r in q_rows if gallery_counts.get(labels[r].item(), 0) - own > 0], dtype=np.int64
    )
    pool = answerable if len(answerable) else q_rows
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pool, size=min(n_queries, len(pool)), replace=False)
    return np.sort(chosen)
