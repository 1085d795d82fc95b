"""The screening passes (``_screened``): the sampled pre-pass and the strips of products.

The screen keeps an entry of row i when ``hi`` reaches the smallest ``s_q`` that still
matters (``_screen_rows``): one integer comparison of the bits of ``S~`` (numpy, no float
conversion) with a per-row and, for the query set as its own gallery, a per-column threshold.
Kept entries below a raised threshold are dropped again.

**Symmetry.** When the gallery is the query set, ``S`` is symmetric (``fl32`` is), so strips
of rows ``[a, b)`` are multiplied only with columns ``[a, M)``: each off-diagonal entry serves
its row and its column (the latter through the column thresholds). Half the products.

**Distributed.** Strips are dealt out to the processes (balanced by their size, ``process_strips``);
thresholds are local to a process, which only makes it keep more.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from rankedlist.evaluation._inputs import RetrievalProblem
from rankedlist.evaluation._screen_bound import Screen, down32
from rankedlist.evaluation._screen_rows import Rows

PRE_SAMPLE = 512  # gallery columns of the threshold pre-pass
MAX_KEPT = 2**27  # kept entries above which screening is abandoned (pathological ties)


def pre_pass(problem: RetrievalProblem, screen: Screen, state: Rows, rows: np.ndarray) -> None:
    """Start the certain counts of ``rows`` from a sample of columns, screened like the main
    pass (relevant items and self left out): ``state.certain_pre``."""
    m = problem.gallery.shape[0]
    samp = np.unique(np.linspace(0, m - 1, min(PRE_SAMPLE, m)).round().astype(np.int64))
    g_ids = problem.gallery_ids[samp]
    kk = min(state.rel.shape[1], samp.shape[0])  # the kk largest suffice: counts stop at R
    for s in range(0, rows.shape[0], 8192):
        rr = rows[s : s + 8192]
        sim = screen.sample_product(rr, samp)
        bad = problem.query_ids[rr][:, None] == g_ids[None, :]
        if problem.same_set:
            bad |= rr[:, None] == samp[None, :]
        sim[bad] = -np.inf
        top = -np.partition(-sim, kk - 1, axis=1)[:, :kk] if kk < sim.shape[1] else sim
        lo32 = down32(screen.bound.lower(top.astype(np.float64))).reshape(-1)
        c = state.keys.count_ge(np.repeat(rr, top.shape[1]), lo32)
        local = np.repeat(np.arange(rr.shape[0]), top.shape[1])
        hist = state.keys.histogram(local, c, rr.shape[0])
        state.certain_pre[rr] = np.cumsum(hist[:, :-1], axis=1)


def strip_rows(problem: RetrievalProblem, kind: str, chunk_size: int | None) -> int:
    """Rows per strip: about 256 MB of products and masks; for the symmetric product also at
    most 1/16 of the rows (diagonal blocks are computed whole), but not under 1024 (smaller
    products run far below the BLAS's speed)."""
    if chunk_size:
        return int(chunk_size)
    n, m = problem.query.shape[0], problem.gallery.shape[0]
    per_row = (2 if kind == "bf16" else 4) + 2
    rows = max(64, 2**28 // (per_row * max(m, 1)))
    if problem.same_set:
        rows = min(rows, max(1024, -(-n // 16)))
    return rows


def process_strips(
    problem: RetrievalProblem, strip: int, rank: int, world: int
) -> list[tuple[int, int]]:
    """This process's strips of query rows, dealt out largest first to the least loaded."""
    n, m = problem.query.shape[0], problem.gallery.shape[0]
    strips = [(s, min(s + strip, n)) for s in range(0, n, strip)]
    if world == 1:
        return strips
    work = [(e - s) * ((m - s) if problem.same_set else m) for s, e in strips]
    load = [0] * world
    mine = []
    for i in sorted(range(len(strips)), key=lambda i: (-work[i], i)):
        w = min(range(world), key=lambda p: (load[p], p))
        load[w] += work[i]
        if w == rank:
            mine.append(strips[i])
    return sorted(mine)


def main_pass(
    problem: RetrievalProblem,
    screen: Screen,
    state: Rows,
    strips: list[tuple[int, int]],
    rel_idx: np.ndarray,
    timings: dict[str, float],
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], bool]:
    """Screen this process's strips; return the kept entries ``(row, col, screened value)``
    and whether there were too many to keep (the pass then stops early)."""
    m = problem.gallery.shape[0]
    same = problem.same_set
    neg_inf = screen.never_bits
    widest = max(((m - s if same else m) * (e - s) for s, e in strips), default=0)
    dtype = torch.bfloat16 if screen.kind == "bf16" else torch.float32
    flat_buf = torch.empty(widest, dtype=dtype)
    mask_buf = np.empty(widest, dtype=bool)
    tmp_buf = np.empty(widest, dtype=bool)
    overflow = False
    out_r, out_c, out_v = [], [], []
    kept = 0
    for s, e in strips:
        t0 = time.perf_counter()
        c0 = s if same else 0  # first column of the strip
        w, b = m - c0, e - s
        bits = screen.product(s, e, c0, flat_buf)
        t1 = time.perf_counter()
        # Relevant items (known exactly) and the query itself never pass: -inf.
        rc = rel_idx[s:e]
        ok = (rc >= c0) & (rc < m)
        bits[np.nonzero(ok)[0], rc[ok] - c0] = neg_inf
        if same:
            bits[np.arange(b), np.arange(b)] = neg_inf
        mask = mask_buf[: b * w].reshape(b, w)
        np.greater_equal(bits, state.key[s:e, None], out=mask)
        for i in np.flatnonzero(state.slow[s:e]):  # non-positive thresholds: float comparison
            mask[i] |= screen.to_float(bits[i]) >= state.theta[s + i]
        if same and w > b:
            # Off-diagonal columns also serve their own rows (the transposed entries).
            tmp = tmp_buf[: b * (w - b)].reshape(b, w - b)
            np.greater_equal(bits[:, b:], state.key[None, e:], out=tmp)
            np.logical_or(mask[:, b:], tmp, out=mask[:, b:])
            slow_cols = np.flatnonzero(state.slow[e:])
            if slow_cols.size:
                sub = screen.to_float(bits[:, b + slow_cols])
                mask[:, b + slow_cols] |= sub >= state.theta[e + slow_cols][None, :]
        flat = np.flatnonzero(mask)
        t2 = time.perf_counter()
        r_loc, c_loc = np.divmod(flat, w)
        rows, cols = r_loc + s, c_loc + c0
        vals = screen.to_float(bits.reshape(-1)[flat])
        row_dir = vals >= state.thr[rows]
        new_r, new_c, new_v = [rows[row_dir]], [cols[row_dir]], [vals[row_dir]]
        if same:
            col_dir = (c_loc >= b) & (vals >= state.thr[cols])
            new_r.append(cols[col_dir])
            new_c.append(rows[col_dir])
            new_v.append(vals[col_dir])
        nr, nc, nv = np.concatenate(new_r), np.concatenate(new_c), np.concatenate(new_v)
        state.add(nr, nv)
        keep = nv >= state.thr[nr]  # what the raised thresholds still need
        out_r.append(nr[keep].astype(np.int32))
        out_c.append(nc[keep].astype(np.int32))
        out_v.append(nv[keep])
        kept += out_r[-1].shape[0]
        if kept > MAX_KEPT:
            overflow = True  # decided with the other processes (no exception mid-collectives)
            break
        t3 = time.perf_counter()
        timings["products"] = timings.get("products", 0.0) + t1 - t0
        timings["screen"] = timings.get("screen", 0.0) + t2 - t1
        timings["bookkeeping"] = timings.get("bookkeeping", 0.0) + t3 - t2
    if not out_r:
        empty = np.zeros(0, dtype=np.int32)
        return (empty, empty, np.zeros(0, dtype=np.float32)), overflow
    er, ec, ev = np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)
    keep = ev >= state.thr[er]  # final local thresholds
    return (er[keep], ec[keep], ev[keep]), overflow
