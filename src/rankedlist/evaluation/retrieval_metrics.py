"""Exact Recall@K, R-Precision and MAP@R by cosine similarity, in bounded memory.

Definitions (the README's Evaluation section): a query's relevant items are the gallery items
of its class, its own item excluded by index when the query set is the gallery; R is their
number. Ranking is a stable sort by descending similarity (lower gallery index first on ties).

How (and why it is fast): queries are processed in chunks; each chunk's similarities
``S = Q_c @ G.T`` are computed once on the tensors' device, then

* one ``topk`` of size ``max R + 1`` per chunk gives the top-R list of every query (R is small:
  <= 11 on SOP, ~59 on CUB), repaired to the stable order (see ``_ranking``); R-Precision and
  MAP@R come from it directly;
* Recall@K needs only the rank of a query's first relevant item. If it is in the top-R list
  the rank is read there; otherwise it is counted, ``#(s > s_best) + #(s == s_best, lower
  index)``, one comparison pass over that query's row. Recall@1000 on SOP therefore costs no
  top-1000 selection.

On CPU inputs (``backend="faiss"``, the default there) the top-R lists come instead from one
faiss IndexFlatIP search (``nearest_neighbors.faiss_search``: the product fused with a heap
selection, in the same stable order), and only the queries whose first relevant item lies
beyond their list get their similarity rows recomputed, in chunks, for the count above. That
is typically a few per cent of the queries, so the evaluation costs little more than the
products themselves.

Nothing of size N x M is ever allocated, and label bookkeeping is O(N) (``np.bincount``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from rankedlist.evaluation._inputs import (
    ArrayLike,
    RetrievalProblem,
    auto_chunk_size,
    check_ks,
    prepare,
)
from rankedlist.evaluation._ranking import (
    count_equal_before,
    count_greater,
    similarities,
    stable_topk,
)
from rankedlist.evaluation.nearest_neighbors import BACKENDS, faiss_search


def retrieval_metrics(
    query: ArrayLike,
    query_labels: Any,
    gallery: ArrayLike | None = None,
    gallery_labels: Any = None,
    ks: tuple[int, ...] | list[int] = (1, 2, 4, 8),
    chunk_size: int | None = None,
    backend: str = "auto",
) -> dict[str, float | int]:
    """Recall@K, R-Precision and MAP@R of ``query`` against ``gallery`` by cosine similarity.

    Args:
        query: (N, D) embeddings, a torch tensor (any device, any float dtype) or numpy array.
            They are L2-normalised here and compared in float32.
        query_labels: (N,) integer class labels.
        gallery: (M, D) embeddings to search, or ``None`` (or ``query`` itself) to search the
            query set against itself with each query's own item excluded by index.
        gallery_labels: (M,) integer labels; required with ``gallery``.
        ks: the Recall@K cut-offs; each must be at most the number of retrievable items.
        chunk_size: queries per chunk; by default about 128 MB of float32 similarities.
        backend: ``"faiss"`` (CPU only: top-R lists from a faiss search, similarity rows
            recomputed only for queries whose first relevant item is beyond the list),
            ``"torch"`` (every chunk's similarities on the tensors' device, ``topk`` per chunk)
            or ``"auto"``: faiss for CPU inputs, torch on a GPU. Both give the same metrics.

    Returns:
        ``{"recall@K": ..., "r_precision": ..., "map@r": ..., "lone_queries": int}``. Metrics
        are fractions in [0, 1], averaged over the queries that have at least one relevant
        gallery item; the others are counted in ``lone_queries`` (metrics are NaN, with a
        warning, if every query is lone).

    Raises:
        TypeError: embeddings not tensors/arrays, labels not integers, ks not ints.
        ValueError: wrong shapes or lengths, NaN/inf embeddings, an empty query set, or a K
            larger than the number of retrievable gallery items.
    """
    problem = prepare(query, query_labels, gallery, gallery_labels)
    ks = check_ks(ks, problem.num_gallery)
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cpu = problem.query.device.type == "cpu"
    if backend == "faiss" and not on_cpu:
        raise ValueError("the faiss back end needs CPU inputs: use backend='torch' on a GPU")
    chunk = int(chunk_size) if chunk_size is not None else auto_chunk_size(problem.gallery.shape[0])
    if backend == "faiss" or (backend == "auto" and on_cpu):
        sums = _accumulate_faiss(problem, ks, chunk)
    else:
        sums = _accumulate(problem, ks, chunk)
    valid = int(sums["num_valid"])
    lone = int(problem.num_relevant.shape[0]) - valid
    out: dict[str, float | int] = {}
    if valid == 0:
        warnings.warn(
            "no query has a relevant gallery item (all queries are lone): metrics are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    for k in ks:
        out[f"recall@{k}"] = sums[f"recall@{k}"] / valid if valid else math.nan
    out["r_precision"] = sums["r_precision"] / valid if valid else math.nan
    out["map@r"] = sums["map@r"] / valid if valid else math.nan
    out["lone_queries"] = lone
    return out


def _relevant_columns(
    problem: RetrievalProblem, qrows: np.ndarray, order: np.ndarray, starts: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded gallery indices of each query's relevant items, and their validity mask."""
    ids = problem.query_ids[qrows]
    counts = problem.gallery_counts[ids]
    width = int(counts.max())
    t = np.arange(width)
    valid = t[None, :] < counts[:, None]
    pos = np.minimum(starts[ids][:, None] + t[None, :], order.shape[0] - 1)
    cols = order[pos]
    if problem.same_set:
        valid &= cols != qrows[:, None]
    dev = problem.gallery.device
    return torch.from_numpy(cols).to(dev), torch.from_numpy(valid).to(dev)


def _accumulate(problem: RetrievalProblem, ks: tuple[int, ...], chunk: int) -> dict[str, float]:
    """Sum each metric over the non-lone queries, chunk by chunk."""
    q, g = problem.query, problem.gallery
    dev = q.device
    m = g.shape[0]
    sums = {f"recall@{k}": 0.0 for k in ks}
    sums.update(r_precision=0.0, map_at_r=0.0)
    # Lone queries are skipped before any matrix product is spent on them.
    rows_all = np.flatnonzero(problem.num_relevant > 0)
    sums["num_valid"] = float(rows_all.shape[0])
    order = np.argsort(problem.gallery_ids, kind="stable")  # gallery grouped by class
    starts = np.cumsum(problem.gallery_counts) - problem.gallery_counts
    g_ids = torch.from_numpy(problem.gallery_ids).to(dev)
    sim_buf = torch.empty(min(chunk, max(len(rows_all), 1)), m, device=dev)
    cmp_buf: torch.Tensor | None = None
    sub_buf: torch.Tensor | None = None
    for start in range(0, rows_all.shape[0], chunk):
        qrows = rows_all[start : start + chunk]
        c = qrows.shape[0]
        qrows_t = torch.from_numpy(qrows).to(dev)
        s = sim_buf[:c]
        similarities(q.index_select(0, qrows_t), g, out=s)
        if problem.same_set:
            s[torch.arange(c, device=dev), qrows_t] = -math.inf
        r = torch.from_numpy(problem.num_relevant[qrows]).to(dev)
        qid = torch.from_numpy(problem.query_ids[qrows]).to(dev)
        k_top = int(problem.num_relevant[qrows].max())
        _, top_idx = stable_topk(s, k_top)
        rel = g_ids[top_idx] == qid[:, None]  # own item is -inf, never in the list
        rank, found = _list_metrics(rel, r, sums)
        missing = (~found).nonzero()[:, 0]
        if missing.numel():
            if cmp_buf is None or sub_buf is None:
                # Allocated once: fresh large CPU tensors cost page faults on every chunk.
                cmp_buf, sub_buf = torch.empty_like(sim_buf), torch.empty_like(sim_buf)
            sub = torch.index_select(s, 0, missing, out=sub_buf[: missing.shape[0]])
            rank[missing] = _first_relevant_rank(
                sub,
                qrows[missing.cpu().numpy()],
                problem,
                order,
                starts,
                cmp_buf,
            )
        _add_recalls(rank, ks, sums)
    sums["map@r"] = sums.pop("map_at_r")
    return sums


def _list_metrics(
    rel: torch.Tensor, r: torch.Tensor, sums: dict[str, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add R-Precision and MAP@R of stable top lists to ``sums``; first-relevant ranks.

    ``rel`` (rows x k, k >= every row's R) marks the relevant items of each list. Returns the
    0-based rank of each row's first relevant item (0 where there is none) and whether the
    list holds one.
    """
    pos = torch.arange(1, rel.shape[1] + 1, device=rel.device)
    hits = rel & (pos[None, :] <= r[:, None])
    hits_f = hits.to(torch.float64)
    sums["r_precision"] += float((hits_f.sum(1) / r).sum())
    precision_at_i = hits_f.cumsum(1) / pos[None, :]
    sums["map_at_r"] += float(((precision_at_i * hits_f).sum(1) / r).sum())
    found = rel.any(1)
    rank = torch.where(found, rel.to(torch.int8).argmax(1), torch.zeros_like(r))
    return rank, found


def _add_recalls(rank: torch.Tensor, ks: tuple[int, ...], sums: dict[str, float]) -> None:
    """Count, per K, the queries whose first relevant item has rank < K."""
    ks_t = torch.tensor(ks, device=rank.device, dtype=torch.long)
    recalled = (rank[:, None] < ks_t[None, :]).sum(0)
    for k, n_hit in zip(ks, recalled.tolist(), strict=True):
        sums[f"recall@{k}"] += n_hit


def _accumulate_faiss(
    problem: RetrievalProblem, ks: tuple[int, ...], chunk: int
) -> dict[str, float]:
    """``_accumulate`` on CPU with the top-R lists of one faiss search.

    Same sums, same stable ranking: the lists are those of ``nearest_neighbors`` (faiss back
    end). Only queries whose first relevant item is beyond their list need their whole
    similarity row, recomputed here in chunks for the exact count of ``_first_relevant_rank``.
    """
    q, g = problem.query, problem.gallery
    m = g.shape[0]
    sums = {f"recall@{k}": 0.0 for k in ks}
    sums.update(r_precision=0.0, map_at_r=0.0)
    rows_all = np.flatnonzero(problem.num_relevant > 0)
    sums["num_valid"] = float(rows_all.shape[0])
    if rows_all.shape[0]:
        rows_t = torch.from_numpy(rows_all)
        qv = q if rows_all.shape[0] == q.shape[0] else q.index_select(0, rows_t)
        k_top = int(problem.num_relevant[rows_all].max())
        _, top_idx = faiss_search(qv, g, k_top, rows_t if problem.same_set else None)
        g_ids = torch.from_numpy(problem.gallery_ids)
        qid = torch.from_numpy(problem.query_ids[rows_all])
        r = torch.from_numpy(problem.num_relevant[rows_all])
        rank, found = _list_metrics(g_ids[top_idx] == qid[:, None], r, sums)
        missing = (~found).nonzero()[:, 0]
        if missing.numel():
            order = np.argsort(problem.gallery_ids, kind="stable")  # gallery grouped by class
            starts = np.cumsum(problem.gallery_counts) - problem.gallery_counts
            n_miss = missing.shape[0]
            sim_buf = torch.empty(min(chunk, n_miss), m)
            cmp_buf = torch.empty_like(sim_buf)
            miss_rows = rows_all[missing.numpy()]
            for start in range(0, n_miss, chunk):
                qrows = miss_rows[start : start + chunk]
                c = qrows.shape[0]
                qrows_t = torch.from_numpy(qrows)
                s = similarities(q.index_select(0, qrows_t), g, out=sim_buf[:c])
                if problem.same_set:
                    s[torch.arange(c), qrows_t] = -math.inf
                rank[missing[start : start + chunk]] = _first_relevant_rank(
                    s, qrows, problem, order, starts, cmp_buf
                )
        _add_recalls(rank, ks, sums)
    sums["map@r"] = sums.pop("map_at_r")
    return sums


def _first_relevant_rank(
    s: torch.Tensor,
    qrows: np.ndarray,
    problem: RetrievalProblem,
    order: np.ndarray,
    starts: np.ndarray,
    cmp_buf: torch.Tensor,
) -> torch.Tensor:
    """Stable rank of each row's most similar relevant item, counted over the whole row."""
    cols, valid = _relevant_columns(problem, qrows, order, starts)
    vals = s.gather(1, cols).masked_fill(~valid, -math.inf)
    best = vals.max(1).values
    # Among equally similar relevant items the lowest index comes first.
    best_col = torch.where(valid & (vals == best[:, None]), cols, s.shape[1]).min(1).values
    rank = count_greater(s, best, out=cmp_buf)
    n_ge = count_greater(s, torch.nextafter(best, torch.full_like(best, -math.inf)), out=cmp_buf)
    tied = (n_ge - rank) > 1  # another item shares the best similarity: order by index
    if bool(tied.any()):
        rows = tied.nonzero()[:, 0]
        rank[rows] += count_equal_before(s[rows], best[rows], best_col[rows])
    return rank
