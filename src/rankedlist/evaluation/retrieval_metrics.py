"""Exact Recall@K, R-Precision and MAP@R by cosine similarity, in bounded memory.

Definitions (the README's Evaluation section): a query's relevant items are the gallery items
of its class, its own item excluded by index when the query set is the gallery; R is their
number. Ranking is a stable sort by descending similarity (lower gallery index first on ties).

Back ends (all compute every query's first-relevant rank and top-R relevance flags; the
totals are exact sums of the per-query values, so they do not depend on chunking or on how
queries were split across processes):

* ``"screened"`` (CPU, ``_screened``): every entry screened once in bf16 (float32 when
  relevant lists are long), with a rigorous error bound, only the entries the bound cannot
  place recomputed exactly, and the product computed once per pair when the query set is the
  gallery. The similarity is the correctly rounded float32 cosine ``fl32(<q, g>)``
  (``_exact``), so results are reproducible to the bit, whatever the BLAS or thread count.
  ``"auto"`` uses it on CPU when relevant lists are short (mean R <= 16: SOP, In-Shop), where
  bf16 halves the product's cost again; with long ones (CUB, Cars) it keeps ``"faiss"``,
  which is as fast there.
* ``"torch"`` (the default on a GPU): chunks of queries, each chunk's float32 similarities
  ``Q_c @ G.T`` computed once on the tensors' device, one ``topk`` of size ``max R + 1`` per
  chunk repaired to the stable order (``_ranking``); Recall@K from the rank of the first
  relevant item, read in the list or counted over the row when it lies beyond.
* ``"faiss"`` (CPU): the same with the top-R lists from one faiss IndexFlatIP search, rows
  recomputed only for queries whose first relevant item is beyond their list.

``"torch"`` and ``"faiss"`` rank by the values their float32 GEMM returns, which can differ
from ``fl32(<q, g>)`` in the last bit, and between batches of rows or thread settings (MKL
rounds differently with one OpenMP thread); the metrics differ only where two cosines of a query
are within a few 1e-7 of each other.

``distributed=True`` splits the work across the processes of torch.distributed's default
group (each computes its share of the queries against the whole gallery, with the torch back end
in the chunks a single process uses; with the query set as gallery, its share of the symmetric
product) and gathers the per-query values: every process gets the numbers a single process
would.

Nothing of size N x M is ever allocated, and label bookkeeping is O(N) (``np.bincount``).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch

from rankedlist.evaluation._comm import Comm, share
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
from rankedlist.evaluation._screen_bound import choose_kind
from rankedlist.evaluation._screened import (
    ScreeningUnsuitable,
    owned_rows,
    row_values,
    screened_rows,
)
from rankedlist.evaluation.nearest_neighbors import faiss_search

BACKENDS = ("auto", "screened", "faiss", "torch")


def retrieval_metrics(
    query: ArrayLike,
    query_labels: Any,
    gallery: ArrayLike | None = None,
    gallery_labels: Any = None,
    ks: tuple[int, ...] | list[int] = (1, 2, 4, 8),
    chunk_size: int | None = None,
    backend: str = "auto",
    distributed: bool = False,
    profile: dict[str, float] | None = None,
    per_query: dict[str, np.ndarray] | None = None,
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
        chunk_size: queries per chunk (per strip for ``"screened"``); by default about 128 MB
            of similarities.
        backend: ``"screened"`` (CPU: bf16 screening, exact recomputation where needed),
            ``"faiss"`` (CPU: top-R lists from a faiss search), ``"torch"`` (chunked products
            and ``topk`` on the tensors' device) or ``"auto"``: screened on CPU, torch on a
            GPU. See the module docstring for how they differ in the last bit.
        distributed: every process of the initialised default process group calls this with
            the same inputs; each computes a share and all get the same result.
        profile: if a dict, it receives the seconds spent per phase (and, for the screened
            back end, the numbers of kept and recomputed entries).
        per_query: if a dict, it receives the per-query values the metrics average, for the
            queries with a relevant item (ascending query index): ``rows`` (their indices),
            ``first_relevant_rank`` (0-based rank of the first relevant item: exact with the
            faiss and torch back ends; the screened one decides only ``rank < K`` for each K of
            ``ks``, which is all Recall@K needs, so compare its ranks with those Ks only),
            ``r_precision`` and ``average_precision`` (the query's MAP@R term).

    Returns:
        ``{"recall@K": ..., "r_precision": ..., "map@r": ..., "lone_queries": int}``. Metrics
        are fractions in [0, 1], averaged over the queries that have at least one relevant
        gallery item; the others are counted in ``lone_queries`` (metrics are NaN, with a
        warning, if every query is lone).

    Raises:
        TypeError: embeddings not tensors/arrays, labels not integers, ks not ints.
        ValueError: wrong shapes or lengths, NaN/inf embeddings, an empty query set, a K
            larger than the number of retrievable gallery items, a CPU-only back end for GPU
            tensors, or ``distributed=True`` without a process group.
    """
    problem = prepare(query, query_labels, gallery, gallery_labels)
    ks = check_ks(ks, problem.num_gallery)
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cpu = problem.query.device.type == "cpu"
    if backend in ("faiss", "screened") and not on_cpu:
        raise ValueError(f"the {backend} back end needs CPU inputs: use backend='torch' on a GPU")
    if backend == "auto":
        # Screening pays with short relevant lists (SOP, In-Shop: bf16 screen); with long
        # ones (CUB, Cars: R ~ 60-100) the faiss search is as fast and needs no exact pass.
        backend = ("screened" if choose_kind(problem) == "bf16" else "faiss") if on_cpu else "torch"
    comm = Comm() if distributed else None
    if comm is not None and comm.world == 1:
        comm = None
    timings: dict[str, float] = {} if profile is None else profile
    t0 = time.perf_counter()
    rank_id, world = (0, 1) if comm is None else (comm.rank, comm.world)
    rows_all = np.flatnonzero(problem.num_relevant > 0)
    values = None
    if backend == "screened":
        try:
            owned = owned_rows(problem, rank_id, world, chunk_size)
            rank, rel = screened_rows(problem, ks, owned, comm, chunk_size, timings=timings)
            values = (rank, *row_values(rel, problem.num_relevant[owned]))
        except ScreeningUnsuitable as exc:  # raised alike on every process
            timings["fallback"] = 1.0
            warnings.warn(
                f"screened evaluation unsuitable here ({exc}); using the faiss back end",
                RuntimeWarning,
                stacklevel=2,
            )
            backend = "faiss"
    if values is None:
        chunk = int(chunk_size) if chunk_size else auto_chunk_size(problem.gallery.shape[0])
        if backend == "faiss":
            owned = rows_all[share(rows_all.shape[0], rank_id, world)]
            values = _rows_faiss(problem, owned, chunk, timings)
        else:
            if not chunk_size:  # at least 8 chunks, so that up to 8 processes all get work
                chunk = min(chunk, max(1, -(-rows_all.shape[0] // 8)))
            # Whole chunks, those a single process computes: a BLAS may round a row's
            # products differently in another batch of rows (seen with MKL on AMD), and a
            # tie that one process sees must be the tie every split sees.
            owned = rows_all[share(rows_all.shape[0], rank_id, world, unit=chunk)]
            values = _rows_torch(problem, owned, chunk)
    rank, r_prec, ap = values
    if comm is not None:
        parts = comm.all_gather_arrays([rank, r_prec, ap, owned])
        rank, r_prec, ap, owned = (np.concatenate([p[i] for p in parts]) for i in range(4))
    if per_query is not None:
        order = np.argsort(owned, kind="stable")  # the processes' shares back in query order
        per_query.update(
            rows=np.asarray(owned, dtype=np.int64)[order],
            first_relevant_rank=np.asarray(rank, dtype=np.int64)[order],
            r_precision=np.asarray(r_prec, dtype=np.float64)[order],
            average_precision=np.asarray(ap, dtype=np.float64)[order],
        )
    timings["total"] = timings.get("total", 0.0) + time.perf_counter() - t0
    valid = int(rows_all.shape[0])
    if rank.shape[0] != valid:  # pragma: no cover - a broken split would be a bug
        raise RuntimeError(f"evaluated {rank.shape[0]} queries, expected {valid}")
    lone = int(problem.num_relevant.shape[0]) - valid
    out: dict[str, float | int] = {}
    if valid == 0:
        warnings.warn(
            "no query has a relevant gallery item (all queries are lone): metrics are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    for k in ks:
        out[f"recall@{k}"] = int(np.count_nonzero(rank < k)) / valid if valid else math.nan
    out["r_precision"] = math.fsum(r_prec.tolist()) / valid if valid else math.nan
    out["map@r"] = math.fsum(ap.tolist()) / valid if valid else math.nan
    out["lone_queries"] = lone
    return out


# --------------------------------------------------------------------------- torch / faiss


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


def _list_values(
    rel: torch.Tensor, r: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """First-relevant ranks within stable top lists, and per-query R-Precision and MAP@R.

    ``rel`` (rows x k, k >= every row's R) marks the relevant items of each list. Returns the
    0-based rank of each row's first relevant item (0 where there is none), whether the list
    holds one, and ``row_values`` of the lists.
    """
    found = rel.any(1)
    rank = torch.where(
        found, rel.to(torch.int8).argmax(1), torch.zeros_like(found, dtype=torch.long)
    )
    r_prec, ap = row_values(rel.cpu().numpy(), r)
    return rank, found, r_prec, ap


def _rows_torch(
    problem: RetrievalProblem, rows_all: np.ndarray, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query (rank, R-Precision, MAP@R) of ``rows_all``, chunk by chunk on the device."""
    q, g = problem.query, problem.gallery
    dev = q.device
    m = g.shape[0]
    n_rows = rows_all.shape[0]
    rank_out = np.zeros(n_rows, dtype=np.int64)
    rp_out, ap_out = np.zeros(n_rows), np.zeros(n_rows)
    order = np.argsort(problem.gallery_ids, kind="stable")  # gallery grouped by class
    starts = np.cumsum(problem.gallery_counts) - problem.gallery_counts
    g_ids = torch.from_numpy(problem.gallery_ids).to(dev)
    sim_buf = torch.empty(min(chunk, max(n_rows, 1)), m, device=dev)
    cmp_buf: torch.Tensor | None = None
    sub_buf: torch.Tensor | None = None
    for start in range(0, n_rows, chunk):
        qrows = rows_all[start : start + chunk]
        c = qrows.shape[0]
        qrows_t = torch.from_numpy(qrows).to(dev)
        s = sim_buf[:c]
        similarities(q.index_select(0, qrows_t), g, out=s)
        if problem.same_set:
            s[torch.arange(c, device=dev), qrows_t] = -math.inf
        r = problem.num_relevant[qrows]
        qid = torch.from_numpy(problem.query_ids[qrows]).to(dev)
        _, top_idx = stable_topk(s, int(r.max()))
        rel = g_ids[top_idx] == qid[:, None]  # own item is -inf, never in the list
        rank, found, rp, ap = _list_values(rel, r)
        missing = (~found).nonzero()[:, 0]
        if missing.numel():
            if cmp_buf is None or sub_buf is None:
                # Allocated once: fresh large CPU tensors cost page faults on every chunk.
                cmp_buf, sub_buf = torch.empty_like(sim_buf), torch.empty_like(sim_buf)
            sub = torch.index_select(s, 0, missing, out=sub_buf[: missing.shape[0]])
            rank[missing] = _first_relevant_rank(
                sub, qrows[missing.cpu().numpy()], problem, order, starts, cmp_buf
            )
        rank_out[start : start + c] = rank.cpu().numpy()
        rp_out[start : start + c], ap_out[start : start + c] = rp, ap
    return rank_out, rp_out, ap_out


def _rows_faiss(
    problem: RetrievalProblem, rows_all: np.ndarray, chunk: int, timings: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_rows_torch`` on CPU with the top-R lists of one faiss search.

    Same values, same stable ranking: the lists are those of ``nearest_neighbors`` (faiss
    back end). Only queries whose first relevant item is beyond their list need their whole
    similarity row, recomputed here in chunks for the exact count of ``_first_relevant_rank``.
    """
    q, g = problem.query, problem.gallery
    m = g.shape[0]
    n_rows = rows_all.shape[0]
    if n_rows == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
    rows_t = torch.from_numpy(rows_all)
    qv = q if n_rows == q.shape[0] else q.index_select(0, rows_t)
    r = problem.num_relevant[rows_all]
    t0 = time.perf_counter()
    _, top_idx = faiss_search(qv, g, int(r.max()), rows_t if problem.same_set else None)
    timings["faiss search"] = timings.get("faiss search", 0.0) + time.perf_counter() - t0
    g_ids = torch.from_numpy(problem.gallery_ids)
    qid = torch.from_numpy(problem.query_ids[rows_all])
    rank, found, rp, ap = _list_values(g_ids[top_idx] == qid[:, None], r)
    missing = (~found).nonzero()[:, 0]
    timings["rows recounted"] = timings.get("rows recounted", 0.0) + missing.numel()
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
    return rank.numpy().astype(np.int64), rp, ap


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
