"""The finish of the screened metrics (``_screened``): exact recomputation and positions.

**Finish** (``finish``): from the kept entries, the certain counts, the entries whose
interval holds a decisive ``s_q`` (recomputed exactly, ``_exact``), and the positions. An
entry whose interval lies wholly above or below every decisive ``s_q`` is placed by its bounds
alone; only the others cost an exact dot product, and exact ties are broken as the stable sort
does (lower gallery index first).
"""

from __future__ import annotations

import time

import numpy as np

from rankedlist.evaluation._exact import exact_pairs
from rankedlist.evaluation._inputs import RetrievalProblem
from rankedlist.evaluation._screen_bound import down32, up32
from rankedlist.evaluation._screen_rows import Rows, prefix


def finish(
    problem: RetrievalProblem,
    state: Rows,
    rel_idx: np.ndarray,
    kept: tuple[np.ndarray, np.ndarray, np.ndarray],
    owned: np.ndarray,
    capped: np.ndarray,
    norms: tuple[np.ndarray, np.ndarray],
    ks: tuple[int, ...],
    timings: dict[str, float],
) -> tuple[np.ndarray, np.ndarray]:
    """First-relevant ranks and top-R relevance flags of the ``owned`` (non-lone) queries.

    ``kept`` holds every kept entry ``(row, col, screened value)`` of the owned rows (from all
    processes); ``capped`` (per query) says that at least ``K_max`` screened entries were
    certainly above ``s_0`` (such entries may have been dropped since, once ``s_0`` stopped
    mattering); ``state.p_best`` the smallest top-R prefix any process used. Returns ``rank``
    (capped at ``K_max``) and ``rel`` (owned x max R): the flags of the top-R lists.
    """
    t0 = time.perf_counter()
    n = problem.query.shape[0]
    n_own = owned.shape[0]
    bound, k_max = state.bound, state.k_max
    rows_e, cols_e, vals_e = kept
    local = np.full(n, -1, dtype=np.int64)
    local[owned] = np.arange(n_own)
    er = local[rows_e]  # owned row of each kept entry
    gr = rows_e.astype(np.int64)  # its query index
    ec = cols_e.astype(np.int64)
    ev = vals_e.astype(np.float64)
    lo32, hi32 = down32(bound.lower(ev)), up32(bound.upper(ev))
    keys = state.keys
    # The interval [lo, hi] of an entry covers the relevant values s_q, q in [c_hi, c_lo).
    c_lo = keys.count_ge(gr, lo32)
    c_hi = keys.count_gt(gr, hi32)
    r = state.r[owned]
    width = state.rel.shape[1]
    q = np.arange(width)[None, :]
    valid = q < r[:, None]

    # Certainly above s_q: lower bound above it (c_lo <= q). Relevant items that may be in
    # the top R: a prefix, no longer than any process ever used (entries beyond were dropped).
    certain = np.cumsum(keys.histogram(er, c_lo, n_own)[:, :-1], axis=1)
    certain = np.maximum(certain, state.certain_pre[owned])
    p = np.minimum(prefix(certain, r), state.p_best[owned])
    # Recall needs s_0's exact rank only if the ambiguous entries could move it across a K.
    c1 = np.where(capped[owned], k_max, certain[:, 0])
    amb1 = np.bincount(er[(c_hi == 0) & (c_lo >= 1)], minlength=n_own)
    ks_arr = np.asarray(ks)
    crosses = ((ks_arr[None, :] > c1[:, None]) & (ks_arr[None, :] <= (c1 + amb1)[:, None])).any(1)
    recall_exact = (c1 < k_max) & crosses
    dec_end = np.maximum(p, recall_exact.astype(np.int64))  # decisive: s_q for q < dec_end

    # Entries whose interval holds a decisive value get their exact value.
    amb_pos = np.flatnonzero((c_hi < c_lo) & (c_hi < dec_end[er]))
    t1 = time.perf_counter()
    qn, gn = norms
    exact = exact_pairs(
        problem.query.numpy(), problem.gallery.numpy(), gr[amb_pos], ec[amb_pos], qn, gn
    )
    t2 = time.perf_counter()

    # Items above s_q: lower bounds above it, or exact values above it (c <= q), ...
    c_pt = c_lo.copy()
    c_pt[amb_pos] = keys.count_ge(gr[amb_pos], exact)
    above = np.cumsum(keys.histogram(er, c_pt, n_own)[:, :-1], axis=1)
    # ... or exactly equal at a lower gallery index (the tie rule).
    eq_lo = keys.count_gt(gr[amb_pos], exact)  # s_q == exact for q in [eq_lo, c_pt)
    n_eq = c_pt[amb_pos] - eq_lo
    if n_eq.sum():
        which = np.repeat(np.arange(amb_pos.shape[0]), n_eq)
        qq = eq_lo[which] + np.arange(int(n_eq.sum())) - np.repeat(np.cumsum(n_eq) - n_eq, n_eq)
        rr = er[amb_pos][which]
        before = ec[amb_pos][which] < rel_idx[owned[rr], qq]
        np.add.at(above, (rr[before], qq[before]), 1)

    # Recall: s_0's rank (exact, or the certain count where no cut-off depends on the rest).
    rank = np.minimum(np.where(recall_exact, above[:, 0], c1), k_max)
    # Top R: r_q sits at position q + (items above it); flag it where that is within R.
    pos = q + above
    hit = valid & (q < p[:, None]) & (pos < r[:, None])
    rel = np.zeros((n_own, width), dtype=bool)
    hr, hq = np.nonzero(hit)
    rel[hr, pos[hr, hq]] = True
    t3 = time.perf_counter()
    timings["decide"] = timings.get("decide", 0.0) + (t1 - t0) + (t3 - t2)
    timings["exact recompute"] = timings.get("exact recompute", 0.0) + t2 - t1
    timings["recomputed entries"] = timings.get("recomputed entries", 0.0) + amb_pos.shape[0]
    timings["kept entries"] = timings.get("kept entries", 0.0) + er.shape[0]
    return rank, rel
