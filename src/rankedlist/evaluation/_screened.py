"""Exact retrieval metrics from one screening pass (CPU; ``retrieval_metrics``'s
``backend="screened"``).

The metrics are those of the float32 similarities ``S = fl32(<q_i, g_j>)`` (``_exact``), ranked
by a stable sort. They depend on few of the N x M entries: per query, only the relevant items'
values (``R`` of them, computed exactly beforehand) and the entries that could land next to
them. So the whole matrix is screened once at low precision and only the entries the screen
cannot place are recomputed exactly.

**What is needed per query.** Its relevant items in the stable order, ``r_0, r_1, ...``
(exact values ``s_q``). Recall@K needs the rank of ``r_0``: the number of other items with
``S > s_0``, or ``S == s_0`` at a lower index. R-Precision and MAP@R need the position of each
``r_q`` in the top R: ``q`` plus the number of non-relevant items before it. A non-relevant
entry matters only if its interval ``[lo, hi]`` (around the screened value, ``_screen_bound``)
reaches such an ``s_q`` (``hi >= s_q``), and needs its exact value only if the interval
contains one (``lo <= s_q <= hi``).

The parts, in the order the data flow:

* ``_screen_bound``: the screen's error bound, bf16 or float32 products (``choose_kind``), and
  their comparison on bits;
* ``_screen_rows``: the per-query thresholds (which relevant values still matter);
* ``_screen_blocks``: the pre-pass over a sample of columns and the main pass over strips;
* ``_screen_finish``: the exact recomputation of the undecided entries, and the positions;
* here: the exact relevant lists, the queries each process owns, and the driver.

**Distributed.** Strips are dealt out to the processes (balanced by their size); the kept
entries of all processes are gathered, and each process finishes its share of the queries.
Thresholds are local to a process, which only makes it keep more.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from rankedlist.evaluation._exact import exact_batched
from rankedlist.evaluation._inputs import RetrievalProblem
from rankedlist.evaluation._screen_blocks import (
    MAX_KEPT,
    main_pass,
    pre_pass,
    process_strips,
    strip_rows,
)
from rankedlist.evaluation._screen_bound import Screen, choose_kind, error_bound, norm_stats
from rankedlist.evaluation._screen_finish import finish
from rankedlist.evaluation._screen_rows import Rows

_MAX_REL_ENTRIES = 2**25  # N x max R above which the relevant lists are too big to hold


class ScreeningUnsuitable(Exception):
    """Raised when the data make screening pointless (huge classes, masses of exact ties)."""


# --------------------------------------------------------------------------- relevant lists


def _relevant_lists(
    problem: RetrievalProblem, qn: np.ndarray, gn: np.ndarray, comm: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact similarities of each query to its relevant items, in the stable order.

    Returns ``(values, indices)`` of shape (N, max R): float32 values descending (ties by
    ascending gallery index), padded with ``-inf`` and index M. Computed per class, classes of
    equal (queries, gallery items) sizes batched into one float64 product. ``qn``, ``gn``:
    the embeddings' float64 norms. With ``comm``, each process computes every ``world``-th
    class and the rows are gathered.
    """
    n, m = problem.query.shape[0], problem.gallery.shape[0]
    same = problem.same_set
    r = problem.num_relevant
    rmax = max(int(r.max()), 1)
    if n * rmax > _MAX_REL_ENTRIES:
        raise ScreeningUnsuitable(f"relevant lists of {n} x {rmax} entries")
    vals = np.full((n, rmax), -np.inf, dtype=np.float32)
    idxs = np.full((n, rmax), m, dtype=np.int64)
    q_np, g_np = problem.query.numpy(), problem.gallery.numpy()
    q_order = np.argsort(problem.query_ids, kind="stable")
    g_order = np.argsort(problem.gallery_ids, kind="stable")
    n_cls = problem.gallery_counts.shape[0]
    q_counts = np.bincount(problem.query_ids, minlength=n_cls)
    g_counts = problem.gallery_counts
    q_start = np.cumsum(q_counts) - q_counts
    g_start = np.cumsum(g_counts) - g_counts
    usable = np.flatnonzero((q_counts > 0) & (g_counts > int(same)))
    if comm is not None:
        by_size = usable[np.argsort(-q_counts[usable] * g_counts[usable], kind="stable")]
        usable = np.sort(by_size[comm.rank :: comm.world])
    shapes = np.stack([q_counts[usable], g_counts[usable]], 1)
    d = q_np.shape[1]
    # Many small products: one BLAS thread (threads only cost synchronisation here).
    with threadpool_limits(1, user_api="blas"):
        for qs, gs in np.unique(shapes, axis=0):
            cls = usable[(shapes[:, 0] == qs) & (shapes[:, 1] == gs)]
            qi = q_order[q_start[cls][:, None] + np.arange(qs)[None, :]]  # (C, qs) ascending
            gi = g_order[g_start[cls][:, None] + np.arange(gs)[None, :]]  # (C, gs) ascending
            step = max(1, 2**24 // ((qs + gs) * d + qs * gs))  # about 128 MB of float64
            for c0 in range(0, cls.shape[0], step):
                qb, gb = qi[c0 : c0 + step], gi[c0 : c0 + step]
                if same:
                    blk = exact_batched(q_np[qb], None, qn[qb], qn[qb])
                else:
                    blk = exact_batched(q_np[qb], g_np[gb], qn[qb], gn[gb])  # (C, qs, gs)
                cols = np.broadcast_to(gb[:, None, :], blk.shape)
                if same:
                    blk[:, np.arange(qs), np.arange(qs)] = -np.inf  # the query itself
                # Stable order: by value descending, then gallery index ascending (gb ascending).
                order = np.argsort(-blk, axis=2, kind="stable")[:, :, : gs - int(same)]
                k = order.shape[2]
                vals[qb.reshape(-1), :k] = np.take_along_axis(blk, order, 2).reshape(-1, k)
                idxs[qb.reshape(-1), :k] = np.take_along_axis(cols, order, 2).reshape(-1, k)
    if comm is not None:
        mine = np.flatnonzero(np.isin(problem.query_ids, usable))
        parts = comm.all_gather_arrays([mine, vals[mine].reshape(-1), idxs[mine].reshape(-1)])
        for rows, v, i in parts:
            vals[rows] = v.reshape(-1, rmax)
            idxs[rows] = i.reshape(-1, rmax)
    return vals, idxs


# --------------------------------------------------------------------------- driver


def owned_rows(
    problem: RetrievalProblem, rank: int, world: int, chunk_size: int | None = None
) -> np.ndarray:
    """The non-lone queries whose metrics process ``rank`` of ``world`` computes.

    With the query set as gallery: a contiguous share (the entries come from every process).
    With a separate gallery: the queries of its own strips.
    """
    valid = np.flatnonzero(problem.num_relevant > 0)
    if problem.same_set:
        return valid[(valid.shape[0] * rank) // world : (valid.shape[0] * (rank + 1)) // world]
    strip = strip_rows(problem, choose_kind(problem), chunk_size)
    mine = np.zeros(problem.query.shape[0], dtype=bool)
    for s, e in process_strips(problem, strip, rank, world):
        mine[s:e] = True
    return valid[mine[valid]]


def screened_rows(
    problem: RetrievalProblem,
    ks: tuple[int, ...],
    owned: np.ndarray,
    comm: Any = None,
    chunk_size: int | None = None,
    kind: str | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(rank, rel)`` of the non-lone queries ``owned`` by this process (see ``finish``).

    ``owned`` must be ``owned_rows(problem, rank, world, chunk_size)``. ``comm`` (``None`` in a
    single process) provides ``rank``, ``world`` and ``all_gather_arrays(list of arrays) ->
    list (per process) of lists``. ``kind``: ``"bf16"`` or ``"float32"`` screening (default:
    ``choose_kind``). Raises ``ScreeningUnsuitable`` (on every process alike) when the data
    make screening pointless.
    """
    timings = {} if timings is None else timings
    kind = kind or choose_kind(problem)
    t0 = time.perf_counter()
    q, g = problem.query, problem.gallery
    same = problem.same_set
    bf16 = kind == "bf16"
    qh = q.to(torch.bfloat16) if bf16 else None
    gh = (qh if same else g.to(torch.bfloat16)) if bf16 else None
    qn, *q_stats = norm_stats(q.numpy(), qh)
    gn, *g_stats = (qn, *q_stats) if same else norm_stats(g.numpy(), gh)
    bound = error_bound(q.shape[1], tuple(q_stats), tuple(g_stats), kind)
    screen = Screen(kind, qh, gh, bound) if bf16 else Screen(kind, q, g, bound)
    rel_vals, rel_idx = _relevant_lists(problem, qn, gn, comm)
    t1 = time.perf_counter()
    state = Rows(problem, rel_vals, screen, max(ks))
    rank_id, world = (0, 1) if comm is None else (comm.rank, comm.world)
    strips = process_strips(problem, strip_rows(problem, kind, chunk_size), rank_id, world)
    valid = problem.num_relevant > 0
    if same:
        # Every process needs every row's threshold (rows are columns of its strips): each
        # screens a share of the rows against the sample and the shares are gathered.
        pre_rows = np.flatnonzero(valid)
        share = (np.arange(pre_rows.shape[0]) * world) // max(pre_rows.shape[0], 1)
        pre_pass(problem, screen, state, pre_rows[share == rank_id])
        if comm is not None:
            width = state.certain_pre.shape[1]
            parts = comm.all_gather_arrays([state.certain_pre.reshape(-1)])
            state.certain_pre = np.max([p[0] for p in parts], axis=0).reshape(-1, width)
        state.refresh(np.flatnonzero(valid))
    else:
        mine = np.zeros(problem.query.shape[0], dtype=bool)
        for s, e in strips:
            mine[s:e] = True
        pre_rows = np.flatnonzero(mine & valid)
        pre_pass(problem, screen, state, pre_rows)
        state.refresh(pre_rows)
    t2 = time.perf_counter()
    timings["relevant lists"] = timings.get("relevant lists", 0.0) + t1 - t0
    timings["pre-pass"] = timings.get("pre-pass", 0.0) + t2 - t1
    kept, overflow = main_pass(problem, screen, state, strips, rel_idx, timings)
    counts = state.hist[:, 0]  # entries certainly above s_0, over everything screened
    if comm is not None:
        parts = comm.all_gather_arrays([counts, np.array([int(overflow)])])
        counts = np.sum([p[0] for p in parts], axis=0)
        overflow = any(int(p[1][0]) for p in parts)
    if overflow:
        raise ScreeningUnsuitable(f"more than {MAX_KEPT} entries to keep (masses of ties?)")
    capped = (counts >= state.k_max) | (state.certain_pre[:, 0] >= state.k_max)
    if comm is not None:
        state.p_best = np.min([p[0] for p in comm.all_gather_arrays([state.p_best])], axis=0)
    if comm is not None and same:
        t3 = time.perf_counter()
        own_mask = np.zeros(problem.query.shape[0], dtype=bool)
        own_mask[owned] = True
        parts = comm.all_gather_arrays(list(kept))
        er, ec, ev = (np.concatenate([p[i] for p in parts]) for i in range(3))
        keep = own_mask[er]
        kept = (er[keep], ec[keep], ev[keep])
        timings["exchange"] = timings.get("exchange", 0.0) + time.perf_counter() - t3
    return finish(problem, state, rel_idx, kept, owned, capped, (qn, gn), ks, timings)


def row_values(rel: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query R-Precision and MAP@R from top-list relevance flags ``rel`` (rows x k >= R).

    R-Precision is ``hits / R``; MAP@R is ``sum_i precision@i * rel_i / R`` over the first R
    positions, summed left to right (``cumsum``), so a query's value does not depend on how
    wide its list was padded.
    """
    if rel.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    width = rel.shape[1]
    pos = np.arange(1, width + 1)
    hits = (rel & (pos[None, :] <= r[:, None])).astype(np.float64)
    r_prec = np.cumsum(hits, axis=1)[:, -1] / r
    prec = np.cumsum(hits, axis=1) / pos[None, :]
    ap = np.cumsum(prec * hits, axis=1)[:, -1] / r
    return r_prec, ap
