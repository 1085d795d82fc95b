"""Exact retrieval metrics from one bf16 screening pass (CPU; the default ``retrieval_metrics``
back end there).

The metrics are those of the float32 similarities ``S = fl32(<q_i, g_j>)`` (``_exact``), ranked
by a stable sort. They depend on few of the N x M entries: per query, only the relevant items'
values (``R`` of them, computed exactly beforehand) and the entries that could land next to
them. So the whole matrix is screened once in bf16 and only entries the screen cannot place are
recomputed exactly.

**Screen.** ``S~ = bf16(q) @ bf16(g).T`` (bf16 inputs and output, float32 accumulation) on
every entry. With ``e_i = |bf16(x_i) - x_i|`` and ``n_i = |x_i|`` (float64, from the actual
vectors, not assumed unit),

    |S~_ij - S_ij| <= e_i n_j + n_i e_j + e_i e_j      (input rounding, Cauchy-Schwarz)
                   + gamma_D |bf16(x_i)| |bf16(x_j)|    (float32 accumulation, any order,
                                                          2**-23 per addition: also truncation)
                   + 2**-7 |S~_ij| / (1 - 2**-7)        (bf16 output: also truncation)
                   + 2**-24 n_i n_j                     (the float32 rounding of S itself)

taken with the maxima over all rows (``_Bound``). Each entry thus has an interval
``[lo, hi]`` that contains ``S``.

**What is needed per query.** Its relevant items sorted in the stable order, ``r_1, r_2, ...``
(exact values ``s_q``). Recall@K needs the rank of ``r_1``: the number of other items with
``S > s_1`` or ``S == s_1`` at a lower index. R-Precision and MAP@R need the position of each
``r_q`` that is in the top R: ``q`` plus the number of non-relevant items before it. A
non-relevant entry matters only if its interval reaches one of those ``s_q`` (``hi >= s_q``),
and it needs its exact value only if the interval contains one (``lo <= s_q <= hi``).

**Which ``s_q`` matter**, kept as a per-query threshold that only rises during the pass:

* ``L``: the R-th largest of the known lower bounds (the relevant values and the ``lo`` of
  entries seen so far; a sample of columns screened up front starts it high). At least R items
  are ``>= L``, so a relevant item below ``L`` is not in the top R.
* Once ``K_max = max(ks)`` entries are certainly above ``s_1``, Recall@K is 0 for every K and
  ``s_1`` no longer matters.

An entry is kept when ``hi`` reaches the smallest ``s_q`` that still matters: one integer
comparison of the bf16 bits (``numpy``, no float conversion) against a per-row and, for the
query set as its own gallery, a per-column threshold.

**Symmetry.** When the gallery is the query set, ``S`` is symmetric (``fl32`` is), so strips
of rows ``[a, b)`` are multiplied only with columns ``[a, M)``: each off-diagonal entry serves
its row and its column (the latter through the column thresholds). Half the products.

**Distributed.** Strips are dealt out to the processes (balanced by their size); the kept
entries of all processes are gathered, and each process finishes its share of the queries.
Thresholds are local to a process, which only makes it keep more.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rankedlist.evaluation._exact import exact_batched, exact_pairs
from rankedlist.evaluation._inputs import RetrievalProblem

STRIP = 1024  # query rows per strip of the main pass
PRE_SAMPLE = 512  # gallery columns of the threshold pre-pass
_MAX_REL_ENTRIES = 2**25  # N x max R above which the relevant lists are too big to hold
_MAX_KEPT = 2**27  # kept entries above which screening is abandoned (pathological ties)


class ScreeningUnsuitable(Exception):
    """Raised when the data make screening pointless (huge classes, masses of exact ties)."""


# --------------------------------------------------------------------------- error bound


@dataclass(frozen=True)
class _Bound:
    """``|S~ - S| <= e0 + rho |S~|`` for every entry (see the module docstring)."""

    e0: float
    rho: float

    def lower(self, v: np.ndarray) -> np.ndarray:
        return v - self.e0 - self.rho * np.abs(v)

    def upper(self, v: np.ndarray) -> np.ndarray:
        return v + self.e0 + self.rho * np.abs(v)

    def inv_upper(self, t: np.ndarray) -> np.ndarray:
        """Largest threshold ``x`` with ``upper(v) >= t  =>  v >= x`` (monotone inverse)."""
        d = t - self.e0
        x = np.where(d >= 0, d / (1 + self.rho), d / (1 - self.rho))
        return x - 1e-12 * (1 + np.abs(x))


def _bound(
    q: torch.Tensor, qh: torch.Tensor, g: torch.Tensor, gh: torch.Tensor, kind: str
) -> _Bound:
    """The screen's error bound for ``kind`` ``"bf16"`` (``qh``, ``gh``: the bf16 copies) or
    ``"float32"`` (a float32 GEMM of the embeddings themselves)."""

    def stats(x: torch.Tensor, xh: torch.Tensor) -> tuple[float, float, float]:
        x64, xh64 = x.double(), xh.double()
        return (
            float((xh64 - x64).norm(dim=1).max()),
            float(x64.norm(dim=1).max()),
            float(xh64.norm(dim=1).max()),
        )

    d = q.shape[1]
    u_acc = 2.0**-23  # per float32 addition; covers truncation as well as rounding
    gamma = d * u_acc / (1 - d * u_acc)
    if kind == "float32":
        nq = float(q.double().norm(dim=1).max())
        ng = nq if g is q else float(g.double().norm(dim=1).max())
        e0 = gamma * nq * ng + 2.0**-24 * nq * ng + 1e-30 * d
        return _Bound(e0=e0 * (1 + 2.0**-20) + 2.0**-60, rho=0.0)
    eq, nq, nhq = stats(q, qh)
    eg, ng, nhg = (eq, nq, nhq) if g is q else stats(g, gh)
    e0 = eq * ng + nq * eg + eq * eg + gamma * nhq * nhg + 2.0**-24 * nq * ng + 1e-30 * d
    rho = 2.0**-7 / (1 - 2.0**-7)
    return _Bound(e0=e0 * (1 + 2.0**-20) + 2.0**-60, rho=rho * (1 + 2.0**-20))


@dataclass(frozen=True)
class _Screen:
    """How entries are screened: bf16 products compared on their int16 bits, or float32
    products (numpy's BLAS) compared on their int32 bits."""

    kind: str
    q: torch.Tensor  # the operands of the products
    g: torch.Tensor
    bound: _Bound

    @property
    def never(self) -> int:
        return 32767 if self.kind == "bf16" else 2**31 - 1

    @property
    def key_dtype(self) -> type:
        return np.int16 if self.kind == "bf16" else np.int32

    def product(self, s: int, e: int, c0: int, flat: torch.Tensor) -> np.ndarray:
        """Bits of ``q[s:e] @ g[c0:].T`` written into the front of ``flat``."""
        b, w = e - s, self.g.shape[0] - c0
        out = flat[: b * w].view(b, w)
        if self.kind == "bf16":
            torch.mm(self.q[s:e], self.g[c0:].T, out=out)
            return out.view(torch.int16).numpy()
        np.matmul(self.q[s:e].numpy(), self.g[c0:].numpy().T, out=out.numpy())
        return out.view(torch.int32).numpy()

    def to_float(self, bits: np.ndarray) -> np.ndarray:
        if self.kind == "bf16":
            return (bits.astype(np.int32) << 16).view(np.float32)
        return bits.view(np.float32)

    def keys(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer thresholds on the bits (rounded down) and the rows that need a float compare.

        Positive thresholds compare as integers on the bits; infinite ones get ``never``; the
        others (zero or negative) are flagged for a float comparison.
        """
        pos = np.isfinite(theta) & (theta > 0)
        t32 = _down32(np.where(pos, theta, 1.0))
        bits = t32.view(np.int32)
        if self.kind == "bf16":
            bits = bits >> 16  # truncation of a positive number: rounds down
        key = np.where(pos, bits, self.never).astype(self.key_dtype)
        slow = np.isfinite(theta) & ~pos
        return key, slow

    def key_value(self, key: np.ndarray) -> np.ndarray:
        val = self.to_float(key.astype(self.key_dtype))
        return np.where(key == self.never, np.inf, val.astype(np.float64))


def _ord_key(v32: np.ndarray) -> np.ndarray:
    """Order-preserving uint32-range int64 keys of float32 values (``-0.0`` below ``0.0``)."""
    b = v32.view(np.int32).astype(np.int64)
    return np.where(b < 0, -(b & 0x7FFFFFFF) - 1, b) + 2**31


def _down32(v: np.ndarray) -> np.ndarray:
    v32 = v.astype(np.float32)
    return np.where(v32.astype(np.float64) > v, np.nextafter(v32, np.float32(-np.inf)), v32)


def _up32(v: np.ndarray) -> np.ndarray:
    v32 = v.astype(np.float32)
    return np.where(v32.astype(np.float64) < v, np.nextafter(v32, np.float32(np.inf)), v32)


# --------------------------------------------------------------------------- relevant lists


def _relevant_lists(problem: RetrievalProblem) -> tuple[np.ndarray, np.ndarray]:
    """Exact similarities of each query to its relevant items, in the stable order.

    Returns ``(values, indices)`` of shape (N, max R): float32 values descending (ties by
    ascending gallery index), padded with ``-inf`` and index M. Computed per class, classes of
    equal (queries, gallery items) sizes batched into one float64 product.
    """
    n, m = problem.query.shape[0], problem.gallery.shape[0]
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
    usable = np.flatnonzero((q_counts > 0) & (g_counts > int(problem.same_set)))
    shapes = np.stack([q_counts[usable], g_counts[usable]], 1)
    for qs, gs in np.unique(shapes, axis=0):
        cls = usable[(shapes[:, 0] == qs) & (shapes[:, 1] == gs)]
        qi = q_order[q_start[cls][:, None] + np.arange(qs)[None, :]]  # (C, qs) ascending
        gi = g_order[g_start[cls][:, None] + np.arange(gs)[None, :]]  # (C, gs) ascending
        d = q_np.shape[1]
        step = max(1, min(4096, 2**24 // ((qs + gs) * d + qs * gs)))  # ~128 MB of float64
        for c0 in range(0, cls.shape[0], step):
            qb, gb = qi[c0 : c0 + step], gi[c0 : c0 + step]
            blk = exact_batched(q_np[qb], g_np[gb])  # (C, qs, gs)
            cols = np.broadcast_to(gb[:, None, :], blk.shape)
            if problem.same_set:
                blk = np.where(cols == qb[:, :, None], np.float32(-np.inf), blk)
            # Stable order: by value descending, then gallery index ascending (gb ascending).
            order = np.argsort(-blk, axis=2, kind="stable")
            sv = np.take_along_axis(blk, order, 2)[:, :, : gs - int(problem.same_set)]
            si = np.take_along_axis(cols, order, 2)[:, :, : gs - int(problem.same_set)]
            k = sv.shape[2]
            vals[qb.reshape(-1), :k] = sv.reshape(-1, k)
            idxs[qb.reshape(-1), :k] = si.reshape(-1, k)
    return vals, idxs


# --------------------------------------------------------------------------- state


class _Rows:
    """Per-query thresholds, updated as kept entries arrive."""

    def __init__(
        self,
        problem: RetrievalProblem,
        rel_vals: np.ndarray,
        bound: _Bound,
        k_max: int,
    ) -> None:
        self.r = problem.num_relevant.astype(np.int64)
        self.rel = rel_vals.astype(np.float64)  # (N, Rmax), descending
        self.t = self.rel[:, 0]
        self.bound = bound
        self.k_max = k_max
        n, rmax = rel_vals.shape
        self.top_lo = np.full((n, rmax), -np.inf)  # largest lower bounds of kept entries
        self.count_above_t = np.zeros(n, dtype=np.int64)
        self.l_pre = np.full(n, -np.inf)  # from the pre-pass sample
        self.theta = np.full(n, -np.inf)
        self.key = np.zeros(n, dtype=np.int16)
        self.slow = np.zeros(n, dtype=bool)
        self.refresh(np.arange(n))

    def l_r(self, rows: np.ndarray, top_lo: np.ndarray | None = None) -> np.ndarray:
        """R-th largest known lower bound of each row (relevant values are exact)."""
        top = self.top_lo if top_lo is None else top_lo
        merged = np.concatenate([self.rel[rows], top[rows]], axis=1)
        merged = -np.sort(-merged, axis=1)
        rr = np.maximum(self.r[rows], 1)
        lr = merged[np.arange(rows.shape[0]), rr - 1]
        return np.maximum(lr, self.l_pre[rows])

    def refresh(self, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        lr = self.l_r(rows)
        rel = self.rel[rows]
        n_ge = (rel >= lr[:, None]).sum(1)  # relevant items that may be in the top R
        a = np.where(
            n_ge > 0, rel[np.arange(rows.shape[0]), np.maximum(n_ge - 1, 0)], np.inf
        )  # the smallest of them
        b = np.where(self.count_above_t[rows] < self.k_max, self.t[rows], np.inf)
        need = np.minimum(a, b)
        need = np.where(self.r[rows] > 0, need, np.inf)
        theta = np.full(rows.shape[0], np.inf)
        fin = np.isfinite(need)
        theta[fin] = self.bound.inv_upper(need[fin])
        self.theta[rows] = theta
        self.key[rows], self.slow[rows] = _bf16_key(theta)

    def add(self, rows: np.ndarray, vals: np.ndarray) -> None:
        """Take kept entries (screened values) of ``rows`` into the thresholds."""
        if rows.size == 0:
            return
        lo = self.bound.lower(vals.astype(np.float64))
        above = _down32(lo) > self.t[rows]  # the criterion ``_finish`` counts with
        self.count_above_t += np.bincount(rows[above], minlength=self.count_above_t.shape[0])
        uniq = _merge_top(self.top_lo, rows, lo)
        self.refresh(uniq)


def _merge_top(top: np.ndarray, rows: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Merge ``vals`` into the per-row descending buffers ``top`` (in place); touched rows."""
    width = top.shape[1]
    order = np.lexsort((-vals, rows))
    rows_s, vals_s = rows[order], vals[order]
    uniq, start, counts = np.unique(rows_s, return_index=True, return_counts=True)
    pos = np.arange(rows_s.shape[0]) - np.repeat(start, counts)
    keep = pos < width
    new = np.full((uniq.shape[0], width), -np.inf)
    new[np.repeat(np.arange(uniq.shape[0]), counts)[keep], pos[keep]] = vals_s[keep]
    merged = np.concatenate([top[uniq], new], axis=1)
    top[uniq] = -np.sort(-merged, axis=1)[:, :width]
    return uniq


# --------------------------------------------------------------------------- passes


def _pre_pass(
    problem: RetrievalProblem,
    qh: torch.Tensor,
    gh: torch.Tensor,
    state: _Rows,
    rows: np.ndarray,
) -> None:
    """Start each row's ``L`` from a sample of columns (screened, relevant and self left out)."""
    m = problem.gallery.shape[0]
    k = min(PRE_SAMPLE, m)
    samp = np.unique(np.linspace(0, m - 1, k).round().astype(np.int64))
    samp_t = torch.from_numpy(samp)
    gs = gh.index_select(0, samp_t)
    g_ids = problem.gallery_ids[samp]
    width = state.top_lo.shape[1]
    kk = min(width, samp.shape[0])
    for s in range(0, rows.shape[0], 8192):
        rr = rows[s : s + 8192]
        sim = torch.mm(qh.index_select(0, torch.from_numpy(rr)), gs.T).float().numpy()
        bad = problem.query_ids[rr][:, None] == g_ids[None, :]
        if problem.same_set:
            bad |= rr[:, None] == samp[None, :]
        sim[bad] = -np.inf
        top = -np.partition(-sim, kk - 1, axis=1)[:, :kk] if kk < sim.shape[1] else sim
        lo = state.bound.lower(top.astype(np.float64))
        lo = -np.sort(-lo, axis=1)
        merged = -np.sort(-np.concatenate([state.rel[rr], lo], axis=1), axis=1)
        state.l_pre[rr] = merged[np.arange(rr.shape[0]), np.maximum(state.r[rr], 1) - 1]


def _strips(problem: RetrievalProblem, rank: int, world: int) -> list[tuple[int, int]]:
    """This process's strips of query rows, dealt out largest first to the least loaded."""
    n, m = problem.query.shape[0], problem.gallery.shape[0]
    strips = [(s, min(s + STRIP, n)) for s in range(0, n, STRIP)]
    if world == 1:
        return strips
    work = [(e - s) * ((m - s) if problem.same_set else m) for s, e in strips]
    load = [0] * world
    mine = []
    for i in sorted(range(len(strips)), key=lambda i: -work[i]):
        w = min(range(world), key=lambda p: (load[p], p))
        load[w] += work[i]
        if w == rank:
            mine.append(strips[i])
    return sorted(mine)


def _main_pass(
    problem: RetrievalProblem,
    qh: torch.Tensor,
    gh: torch.Tensor,
    state: _Rows,
    strips: list[tuple[int, int]],
    timings: dict[str, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screen this process's strips; return the kept entries ``(row, col, screened value)``."""
    m = problem.gallery.shape[0]
    same = problem.same_set
    q_ids, g_ids = problem.query_ids, problem.gallery_ids
    widest = max((m - s if same else m) for s, _ in strips) if strips else 0
    buf = torch.empty(STRIP * widest, dtype=torch.bfloat16)
    mask_buf = np.empty(STRIP * widest, dtype=bool)
    tmp_buf = np.empty(STRIP * widest, dtype=bool)
    out_r, out_c, out_v = [], [], []
    kept = 0
    for s, e in strips:
        t0 = time.perf_counter()
        c0 = s if same else 0  # first column of the strip
        w = m - c0
        b = e - s
        sim = buf[: b * w].view(b, w)
        torch.mm(qh[s:e], gh[c0:].T, out=sim)
        t1 = time.perf_counter()
        bits = sim.view(torch.int16).numpy()
        mask = mask_buf[: b * w].reshape(b, w)
        np.greater_equal(bits, state.key[s:e, None], out=mask)
        slow_rows = np.flatnonzero(state.slow[s:e])
        for i in slow_rows:  # non-positive thresholds: float comparison
            mask[i] |= _bf16_to_f32(bits[i]) >= state.theta[s + i]
        if same and w > b:
            # Off-diagonal columns also serve their own rows (the transposed entries).
            tmp = tmp_buf[: b * (w - b)].reshape(b, w - b)
            np.greater_equal(bits[:, b:], state.key[None, e:], out=tmp)
            np.logical_or(mask[:, b:], tmp, out=mask[:, b:])
            slow_cols = np.flatnonzero(state.slow[e:])
            if slow_cols.size:
                sub = _bf16_to_f32(bits[:, b + slow_cols])
                mask[:, b + slow_cols] |= sub >= state.theta[e + slow_cols][None, :]
        flat = np.flatnonzero(mask)
        t2 = time.perf_counter()
        r_loc, c_loc = np.divmod(flat, w)
        rows = r_loc + s
        cols = c_loc + c0
        vals = _bf16_to_f32(bits.reshape(-1)[flat])
        useful = q_ids[rows] != g_ids[cols]  # relevant items are known exactly already
        if same:
            useful &= rows != cols
        rows, cols, vals, c_loc = rows[useful], cols[useful], vals[useful], c_loc[useful]
        row_dir = vals >= _row_threshold(state, rows)
        new_r, new_c, new_v = [rows[row_dir]], [cols[row_dir]], [vals[row_dir]]
        if same:
            col_dir = (c_loc >= b) & (vals >= _row_threshold(state, cols))
            new_r.append(cols[col_dir])
            new_c.append(rows[col_dir])
            new_v.append(vals[col_dir])
        nr, nc, nv = np.concatenate(new_r), np.concatenate(new_c), np.concatenate(new_v)
        out_r.append(nr.astype(np.int32))
        out_c.append(nc.astype(np.int32))
        out_v.append(nv)
        kept += nr.shape[0]
        if kept > _MAX_KEPT:
            raise ScreeningUnsuitable(f"more than {_MAX_KEPT} entries to keep")
        state.add(nr.astype(np.int64), nv)
        t3 = time.perf_counter()
        timings["bf16 products"] = timings.get("bf16 products", 0.0) + t1 - t0
        timings["screen"] = timings.get("screen", 0.0) + t2 - t1
        timings["bookkeeping"] = timings.get("bookkeeping", 0.0) + t3 - t2
    if not out_r:
        empty = np.zeros(0, dtype=np.int32)
        return empty, empty, np.zeros(0, dtype=np.float32)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)


def _row_threshold(state: _Rows, rows: np.ndarray) -> np.ndarray:
    """The float value each row's screen compared with (its bf16 key, or theta when slow)."""
    key = state.key[rows]
    val = np.where(key == _NEVER, np.inf, _bf16_to_f32(key))
    return np.where(state.slow[rows], state.theta[rows], val)


# --------------------------------------------------------------------------- finishing


def _finish(
    problem: RetrievalProblem,
    state: _Rows,
    rel_vals: np.ndarray,
    rel_idx: np.ndarray,
    rows_e: np.ndarray,
    cols_e: np.ndarray,
    vals_e: np.ndarray,
    owned: np.ndarray,
    ks: tuple[int, ...],
    timings: dict[str, float],
) -> tuple[np.ndarray, np.ndarray]:
    """First-relevant ranks and top-R relevance flags of the ``owned`` (non-lone) queries.

    ``rows_e, cols_e, vals_e`` are every kept entry of the owned rows (from all processes).
    Returns ``rank`` (capped at ``K_max``) and ``rel`` (owned x max R) flags of the top-R lists.
    """
    t0 = time.perf_counter()
    n = problem.query.shape[0]
    bound = state.bound
    k_max = state.k_max
    local = np.full(n, -1, dtype=np.int64)
    local[owned] = np.arange(owned.shape[0])
    # Entries sorted by owned row.
    order = np.argsort(local[rows_e], kind="stable")
    er = local[rows_e[order]]
    ec = cols_e[order].astype(np.int64)
    ev = vals_e[order].astype(np.float64)
    lo32 = _down32(bound.lower(ev))
    hi32 = _up32(bound.upper(ev))
    n_own = owned.shape[0]
    seg_end = np.searchsorted(er, np.arange(n_own), side="right")

    # Final L and recall cap, from every kept entry (each process only saw its own).
    top_all = np.full((n, state.top_lo.shape[1]), -np.inf)
    if er.size:
        _merge_top(top_all, owned[er], bound.lower(ev))
    lr = state.l_r(owned, top_all)
    r = state.r[owned]
    rv = rel_vals[owned].astype(np.float32)  # (n_own, Rmax) descending
    ri = rel_idx[owned]
    width = rv.shape[1]
    row_of = np.repeat(np.arange(n_own), width)
    q_of = np.tile(np.arange(width), n_own)
    sval = rv.reshape(-1)
    sidx = ri.reshape(-1)
    valid = q_of < r[row_of]

    # Certain counts above each relevant value: lower bounds strictly above it.
    lo_keys = (er << 32) | _ord_key(lo32)
    lo_sorted = np.sort(lo_keys)
    s_keys = (row_of << 32) | _ord_key(sval)
    certain = seg_end[row_of] - np.searchsorted(lo_sorted, s_keys, side="right")
    certain = np.where(valid, certain, 0)
    may_top = valid & (sval.astype(np.float64) >= lr[row_of]) & (q_of + certain < r[row_of])
    # Recall: r_1 matters unless certainly beyond K_max, and needs exact counts only when
    # the ambiguous entries could move it across a cut-off.
    hi_keys = (er << 32) | _ord_key(hi32)
    first = np.arange(n_own) * width
    c1 = certain[first]
    t_keys = s_keys[first]
    # Ambiguous for r_1: lo <= t and hi >= t.
    amb1 = np.bincount(
        er[(lo_keys <= t_keys[er]) & (hi_keys >= t_keys[er])], minlength=n_own
    ).astype(np.int64)
    ks_arr = np.array(ks)
    crosses = ((ks_arr[None, :] > c1[:, None]) & (ks_arr[None, :] <= (c1 + amb1)[:, None])).any(1)
    recall_exact = (c1 < k_max) & crosses
    decisive = may_top.copy()
    decisive[first] |= recall_exact

    # Entries whose interval contains a decisive value get their exact value.
    d_keys = np.sort(s_keys[decisive])
    amb = np.searchsorted(d_keys, hi_keys, side="right") > np.searchsorted(
        d_keys, lo_keys, side="left"
    )
    t1 = time.perf_counter()
    amb_pos = np.flatnonzero(amb)
    exact = exact_pairs(
        problem.query.numpy(), problem.gallery.numpy(), owned[er[amb_pos]], ec[amb_pos]
    )
    t2 = time.perf_counter()

    # Points: exact values where recomputed, lower bounds elsewhere (those are never equal to
    # a decisive value, so "above" is exact for them).
    point32 = lo32.copy()
    point32[amb_pos] = exact
    p_keys = np.sort((er << 32) | _ord_key(point32))
    above = seg_end[row_of] - np.searchsorted(p_keys, s_keys, side="right")
    # Ties at a decisive value: recomputed entries equal to it with a lower gallery index.
    tie_keys = (er[amb_pos] << 32) | _ord_key(exact)
    tie_order = np.lexsort((ec[amb_pos], tie_keys))
    tie_keys, tie_cols = tie_keys[tie_order], ec[amb_pos][tie_order]
    d_pos = np.flatnonzero(decisive)
    a0 = np.searchsorted(tie_keys, s_keys[d_pos], side="left")
    a1 = np.searchsorted(tie_keys, s_keys[d_pos], side="right")
    n_tie = a1 - a0
    if n_tie.sum():
        which = np.repeat(np.arange(d_pos.shape[0]), n_tie)
        at = np.arange(int(n_tie.sum())) - np.repeat(np.cumsum(n_tie) - n_tie, n_tie) + a0[which]
        before = tie_cols[at] < sidx[d_pos][which]
        above[d_pos] += np.bincount(which[before], minlength=d_pos.shape[0])

    # Recall: rank of r_1 (exact, or the certain count when no cut-off depends on the rest).
    rank = np.where(recall_exact, above[first], c1)
    rank = np.minimum(rank, k_max)
    # Top-R flags: positions q + (items above) of the relevant items that are in the top R.
    pos = q_of + above
    hit = may_top & (pos < r[row_of])
    rel = np.zeros((n_own, width), dtype=bool)
    rel[row_of[hit], pos[hit]] = True
    t3 = time.perf_counter()
    timings["decide"] = timings.get("decide", 0.0) + (t1 - t0) + (t3 - t2)
    timings["exact recompute"] = timings.get("exact recompute", 0.0) + t2 - t1
    timings["recomputed entries"] = timings.get("recomputed entries", 0.0) + amb_pos.shape[0]
    timings["kept entries"] = timings.get("kept entries", 0.0) + er.shape[0]
    return rank, rel


# --------------------------------------------------------------------------- driver


def screened_rows(
    problem: RetrievalProblem,
    ks: tuple[int, ...],
    owned: np.ndarray,
    comm: Any = None,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(rank, rel)`` of the non-lone queries ``owned`` by this process (see ``_finish``).

    ``comm`` (``None`` in a single process) provides ``rank``, ``world`` and
    ``all_gather_arrays(list of arrays) -> list of lists``.
    """
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    q, g = problem.query, problem.gallery
    qh = q.to(torch.bfloat16)
    gh = qh if problem.same_set else g.to(torch.bfloat16)
    bound = _bound(q, qh, g, gh)
    rel_vals, rel_idx = _relevant_lists(problem)
    t1 = time.perf_counter()
    state = _Rows(problem, rel_vals, bound, max(ks))
    rank_id, world = (0, 1) if comm is None else (comm.rank, comm.world)
    strips = _strips(problem, rank_id, world)
    valid = problem.num_relevant > 0
    if problem.same_set:
        # Every process needs every row's threshold (rows are columns of its strips): each
        # screens a share of the rows against the sample and the results are gathered.
        pre_rows = np.flatnonzero(valid)
        pre_rows = pre_rows[
            (np.arange(pre_rows.shape[0]) * world) // max(pre_rows.shape[0], 1) == rank_id
        ]
        _pre_pass(problem, qh, gh, state, pre_rows)
        if comm is not None:
            parts = comm.all_gather_arrays([state.l_pre])
            state.l_pre = np.max(np.stack([p[0] for p in parts]), axis=0)
        state.refresh(np.flatnonzero(valid))
    else:
        mine = np.zeros(problem.query.shape[0], dtype=bool)
        for s, e in strips:
            mine[s:e] = True
        pre_rows = np.flatnonzero(mine & valid)
        _pre_pass(problem, qh, gh, state, pre_rows)
        state.refresh(pre_rows)
    t2 = time.perf_counter()
    timings["relevant lists"] = timings.get("relevant lists", 0.0) + t1 - t0
    timings["pre-pass"] = timings.get("pre-pass", 0.0) + t2 - t1
    er, ec, ev = _main_pass(problem, qh, gh, state, strips, timings)
    if comm is not None and problem.same_set:
        t3 = time.perf_counter()
        own_mask = np.zeros(problem.query.shape[0], dtype=bool)
        own_mask[owned] = True
        # Each process sends every process the entries of its rows; gathered to all here.
        parts = comm.all_gather_arrays([er, ec, ev])
        er = np.concatenate([p[0] for p in parts])
        ec = np.concatenate([p[1] for p in parts])
        ev = np.concatenate([p[2] for p in parts])
        keep = own_mask[er]
        er, ec, ev = er[keep], ec[keep], ev[keep]
        timings["exchange"] = timings.get("exchange", 0.0) + time.perf_counter() - t3
    return _finish(problem, state, rel_vals, rel_idx, er, ec, ev, owned, ks, timings)


def sums_from_rows(
    rank: np.ndarray, rel: np.ndarray, r: np.ndarray, ks: tuple[int, ...]
) -> dict[str, float]:
    """Metric sums over queries from first-relevant ranks and top-R relevance flags.

    Per query, R-Precision is ``hits / R`` and MAP@R ``sum_i precision@i * rel_i / R`` over the
    first R positions, summed left to right (``cumsum``); the sums over queries are
    ``math.fsum`` (exact, so independent of how queries were split into chunks or processes).
    """
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.count_nonzero(rank < k))
    if rel.shape[0] == 0:
        out["r_precision"] = out["map@r"] = 0.0
        return out
    width = rel.shape[1]
    pos = np.arange(1, width + 1)
    hits = (rel & (pos[None, :] <= r[:, None])).astype(np.float64)
    r_prec = hits.sum(1) / r
    prec = np.cumsum(hits, axis=1) / pos[None, :]
    ap = np.cumsum(prec * hits, axis=1)[:, -1] / r
    out["r_precision"] = math.fsum(r_prec.tolist())
    out["map@r"] = math.fsum(ap.tolist())
    return out
