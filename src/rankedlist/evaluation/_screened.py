"""Exact retrieval metrics from one screening pass (CPU; ``retrieval_metrics``'s
``backend="screened"``).

The metrics are those of the float32 similarities ``S = fl32(<q_i, g_j>)`` (``_exact``), ranked
by a stable sort. They depend on few of the N x M entries: per query, only the relevant items'
values (``R`` of them, computed exactly beforehand) and the entries that could land next to
them. So the whole matrix is screened once at low precision and only the entries the screen
cannot place are recomputed exactly.

**Screen.** ``S~ = bf16(q) @ bf16(g).T`` (bf16 inputs and output, float32 accumulation) on
every entry. With ``e_i = |bf16(x_i) - x_i|`` and ``n_i = |x_i|`` (float64, from the actual
vectors, not assumed unit),

    |S~_ij - S_ij| <= e_i n_j + n_i e_j + e_i e_j      (input rounding, Cauchy-Schwarz)
                   + gamma_D |bf16(x_i)| |bf16(x_j)|    (float32 accumulation, any order,
                                                          2**-23 per addition: also truncation)
                   + 2**-7 |S~_ij| / (1 - 2**-7)        (bf16 output: also truncation)
                   + 2**-24 n_i n_j                     (the float32 rounding of S itself)

taken with the maxima over all rows (``_Bound``): about 0.004 + 0.008 |S~| for unit vectors
in 512 dimensions. Each entry thus has an interval ``[lo, hi]`` that contains ``S``. When
relevant lists are long (``choose_kind``: CUB, Cars) that interval holds a relevant value too
often; the screen is then a float32 product (numpy's BLAS), bound ``gamma_D n_i n_j + 2**-24``.

**What is needed per query.** Its relevant items in the stable order, ``r_0, r_1, ...``
(exact values ``s_q``). Recall@K needs the rank of ``r_0``: the number of other items with
``S > s_0``, or ``S == s_0`` at a lower index. R-Precision and MAP@R need the position of each
``r_q`` in the top R: ``q`` plus the number of non-relevant items before it. A non-relevant
entry matters only if its interval reaches such an ``s_q`` (``hi >= s_q``), and needs its
exact value only if the interval contains one (``lo <= s_q <= hi``).

**Which ``s_q`` matter** (``_Rows``), known better as the pass goes on: ``r_q`` is out of the
top R for good once ``q`` + (entries certainly above ``s_q``, ``lo > s_q``) reaches R; the
others form a prefix ``r_0 .. r_{p-1}``. ``s_0`` stops mattering for Recall@K once
``K_max = max(ks)`` entries are certainly above it. A pre-pass over a sample of 512 columns
(screened alike) starts these counts. The screen keeps an entry of row i when ``hi`` reaches
the smallest ``s_q`` that still matters: one integer comparison of the bits of ``S~`` (numpy,
no float conversion) with a per-row and, for the query set as its own gallery, a per-column
threshold.
Kept entries below a raised threshold are dropped again.

**Symmetry.** When the gallery is the query set, ``S`` is symmetric (``fl32`` is), so strips
of rows ``[a, b)`` are multiplied only with columns ``[a, M)``: each off-diagonal entry serves
its row and its column (the latter through the column thresholds). Half the products.

**Finish** (``_finish``): from the kept entries, the certain counts, the entries whose
interval holds a decisive ``s_q`` (recomputed exactly, ``_exact``), and the positions.

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
from threadpoolctl import threadpool_limits

from rankedlist.evaluation._exact import exact_batched, exact_pairs
from rankedlist.evaluation._inputs import RetrievalProblem

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
        if self.rho == 0:  # no 0 * inf for the -inf of left-out entries
            return v - self.e0
        return v - self.e0 - self.rho * np.abs(v)

    def upper(self, v: np.ndarray) -> np.ndarray:
        if self.rho == 0:
            return v + self.e0
        return v + self.e0 + self.rho * np.abs(v)

    def inv_upper(self, t: np.ndarray) -> np.ndarray:
        """Largest threshold ``x`` with ``upper(v) >= t  =>  v >= x`` (monotone inverse)."""
        d = t - self.e0
        x = np.where(d >= 0, d / (1 + self.rho), d / (1 - self.rho))
        return x - 1e-12 * (1 + np.abs(x))


def _norm_stats(x: np.ndarray, xh: torch.Tensor | None) -> tuple[np.ndarray, float, float, float]:
    """float64 norms of the rows of ``x``; the largest norm, largest ``|bf16(x) - x|`` and
    largest ``|bf16(x)|`` (``xh``: the bf16 copy, or ``None``: both 0). In cache-sized chunks.
    """
    norms = np.empty(x.shape[0])
    e_max = nh_max = 0.0
    for s in range(0, x.shape[0], 2048):
        v = x[s : s + 2048]
        norms[s : s + 2048] = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float64))
        if xh is not None:
            h = _bits_to_f32(xh[s : s + 2048].view(torch.int16).numpy())
            d = h - v  # exact in float32: the bits the rounding dropped
            e_max = max(e_max, float(np.einsum("ij,ij->i", d, d, dtype=np.float64).max()))
            nh_max = max(nh_max, float(np.einsum("ij,ij->i", h, h, dtype=np.float64).max()))
    return norms, float(norms.max()), math.sqrt(e_max), math.sqrt(nh_max)


def _bound(
    d: int, q_stats: tuple[float, float, float], g_stats: tuple[float, float, float], kind: str
) -> _Bound:
    """The screen's error bound for ``kind`` (``"bf16"`` or ``"float32"`` products), from the
    (largest norm, largest bf16 rounding error norm, largest bf16 norm) of queries and gallery.
    """
    (nq, eq, nhq), (ng, eg, nhg) = q_stats, g_stats
    u_acc = 2.0**-23  # per float32 addition; covers truncation as well as rounding
    gamma = d * u_acc / (1 - d * u_acc)
    if kind == "float32":
        e0 = gamma * nq * ng + 2.0**-24 * nq * ng + 1e-30 * d
        return _Bound(e0=e0 * (1 + 2.0**-20) + 2.0**-60, rho=0.0)
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
    def never_bits(self) -> int:
        """The bits of -inf (as the integer type of the bits)."""
        return -128 if self.kind == "bf16" else -8388608

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

    def sample_product(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float32 values of ``q[rows] @ g[cols].T``, screened the same way."""
        qr = self.q.index_select(0, torch.from_numpy(rows))
        gc = self.g.index_select(0, torch.from_numpy(cols))
        if self.kind == "bf16":
            return _bits_to_f32(torch.mm(qr, gc.T).view(torch.int16).numpy())
        return np.matmul(qr.numpy(), gc.numpy().T)

    def to_float(self, bits: np.ndarray) -> np.ndarray:
        return _bits_to_f32(bits) if self.kind == "bf16" else bits.view(np.float32)

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
        return np.where(key == self.never, np.float32(np.inf), val)


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


# --------------------------------------------------------------------------- state


class _RelKeys:
    """The relevant values of a set of queries as one ascending array of (row, value) keys, to
    count with ``searchsorted`` how many of a query's relevant values lie above a value."""

    def __init__(self, rel: np.ndarray, r: np.ndarray) -> None:
        n, width = rel.shape
        q = np.arange(width)[None, :]
        valid = q < r[:, None]
        # Row by row, values ascending: the valid entries of each row, reversed.
        rev = rel[:, ::-1]
        rev_valid = valid[:, ::-1]
        rows = np.broadcast_to(np.arange(n)[:, None], rel.shape)
        self.keys = (rows[rev_valid].astype(np.int64) << 32) | _ord_key(rev[rev_valid])
        self.end = np.cumsum(r)  # end of each row's segment
        self.width = width

    def count_ge(self, rows: np.ndarray, v32: np.ndarray) -> np.ndarray:
        """Per entry, the number of relevant values of its row that are >= ``v32``."""
        k = (rows.astype(np.int64) << 32) | _ord_key(v32)
        return self.end[rows] - np.searchsorted(self.keys, k, side="left")

    def count_gt(self, rows: np.ndarray, v32: np.ndarray) -> np.ndarray:
        """Per entry, the number of relevant values of its row that are > ``v32``."""
        k = (rows.astype(np.int64) << 32) | _ord_key(v32)
        return self.end[rows] - np.searchsorted(self.keys, k, side="right")

    def histogram(self, rows: np.ndarray, c: np.ndarray, n: int) -> np.ndarray:
        """(n, width + 1) counts of the entries per row and per ``c``."""
        w1 = self.width + 1
        flat = np.bincount(rows.astype(np.int64) * w1 + c, minlength=n * w1)
        return flat.reshape(n, w1)


def _prefix(certain: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per row, the number p of relevant items r_q (stable order) that may be in the top R:
    those with ``q + certain[q] < R`` (a prefix, since both terms grow with q)."""
    q = np.arange(certain.shape[1])[None, :]
    return ((q + certain < r[:, None]) & (q < r[:, None])).sum(1)


class _Rows:
    """Per-query thresholds of the screen, only ever raised as kept entries arrive.

    ``certain[i, q]``: entries known to be strictly above the relevant value ``s_q`` (lower
    bound above it), kept as a histogram over ``c = #{q: s_q >= lo}`` and summed on demand.
    Relevant items with ``q + certain[i, q] >= R`` are out of the top R for good; of the
    others only ``s_(p-1)``, the smallest, matters for the screen (``_prefix``). Recall@K
    needs ``s_0`` until ``certain[i, 0] >= K_max``.
    """

    def __init__(
        self, problem: RetrievalProblem, rel_vals: np.ndarray, screen: _Screen, k_max: int
    ) -> None:
        self.r = problem.num_relevant.astype(np.int64)
        self.rel = rel_vals  # (N, Rmax) float32, descending
        self.t = rel_vals[:, 0]
        self.keys = _RelKeys(rel_vals, self.r)
        self.screen = screen
        self.bound = screen.bound
        self.k_max = k_max
        n, width = rel_vals.shape
        self.hist = np.zeros((n, width + 1), dtype=np.int64)  # kept entries
        self.certain_pre = np.zeros((n, width), dtype=np.int64)  # from the pre-pass sample
        self.p_best = self.r.copy()  # smallest prefix seen (it may not grow back)
        self.theta = np.full(n, np.inf)  # keep an entry of row i when S~ >= theta[i]
        self.key = np.full(n, screen.never, dtype=screen.key_dtype)
        self.slow = np.zeros(n, dtype=bool)
        self.thr = np.full(n, np.inf, dtype=np.float32)  # the value the screen compares with

    def certain(self, rows: np.ndarray, hist: np.ndarray | None = None) -> np.ndarray:
        h = self.hist if hist is None else hist
        main = np.cumsum(h[rows, :-1], axis=1)
        return np.maximum(main, self.certain_pre[rows])

    def refresh(self, rows: np.ndarray) -> None:
        """Recompute the thresholds of ``rows`` from what is known now."""
        if rows.size == 0:
            return
        certain = self.certain(rows)
        p = np.minimum(_prefix(certain, self.r[rows]), self.p_best[rows])
        self.p_best[rows] = p
        rel = self.rel[rows]
        a = np.where(p > 0, rel[np.arange(rows.shape[0]), np.maximum(p - 1, 0)], np.inf)
        b = np.where(certain[:, 0] < self.k_max, self.t[rows], np.inf)
        need = np.where(self.r[rows] > 0, np.minimum(a, b), np.inf).astype(np.float64)
        theta = np.full(rows.shape[0], np.inf)
        fin = np.isfinite(need)
        theta[fin] = self.bound.inv_upper(need[fin])
        key, slow = self.screen.keys(theta)
        self.theta[rows], self.key[rows], self.slow[rows] = theta, key, slow
        self.thr[rows] = np.where(slow, _down32(theta), self.screen.key_value(key))

    def add(self, rows: np.ndarray, vals: np.ndarray) -> None:
        """Take kept entries (screened values) of ``rows`` into the thresholds."""
        if rows.size == 0:
            return
        lo32 = _down32(self.bound.lower(vals.astype(np.float64)))
        c = self.keys.count_ge(rows, lo32)
        low = c < self.r[rows]  # above some relevant value: changes a count
        n = self.hist.shape[0]
        self.hist += self.keys.histogram(rows[low], c[low], n)
        touched = np.flatnonzero(np.bincount(rows[low], minlength=n))
        self.refresh(touched)


# --------------------------------------------------------------------------- passes


def _pre_pass(problem: RetrievalProblem, screen: _Screen, state: _Rows, rows: np.ndarray) -> None:
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
        lo32 = _down32(screen.bound.lower(top.astype(np.float64))).reshape(-1)
        c = state.keys.count_ge(np.repeat(rr, top.shape[1]), lo32)
        local = np.repeat(np.arange(rr.shape[0]), top.shape[1])
        hist = state.keys.histogram(local, c, rr.shape[0])
        state.certain_pre[rr] = np.cumsum(hist[:, :-1], axis=1)


def _bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.int32) << 16).view(np.float32)


def _strip_rows(problem: RetrievalProblem, kind: str, chunk_size: int | None) -> int:
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


def _strips(problem: RetrievalProblem, strip: int, rank: int, world: int) -> list[tuple[int, int]]:
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
    strip = _strip_rows(problem, choose_kind(problem), chunk_size)
    mine = np.zeros(problem.query.shape[0], dtype=bool)
    for s, e in _strips(problem, strip, rank, world):
        mine[s:e] = True
    return valid[mine[valid]]


def _main_pass(
    problem: RetrievalProblem,
    screen: _Screen,
    state: _Rows,
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
        if kept > _MAX_KEPT:
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


# --------------------------------------------------------------------------- finishing


def _finish(
    problem: RetrievalProblem,
    state: _Rows,
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
    lo32, hi32 = _down32(bound.lower(ev)), _up32(bound.upper(ev))
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
    p = np.minimum(_prefix(certain, r), state.p_best[owned])
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


# --------------------------------------------------------------------------- driver


def choose_kind(problem: RetrievalProblem) -> str:
    """bf16 screening unless relevant lists are long (CUB, Cars: R ~ 60-100).

    With many relevant items per query, a bf16 interval (about +-0.005) often holds one of
    them and the exact recomputations would cost more than the float32 products they save.
    """
    valid = problem.num_relevant[problem.num_relevant > 0]
    mean_r = float(valid.mean()) if valid.size else 0.0
    return "float32" if mean_r > 16 else "bf16"


def screened_rows(
    problem: RetrievalProblem,
    ks: tuple[int, ...],
    owned: np.ndarray,
    comm: Any = None,
    chunk_size: int | None = None,
    kind: str | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(rank, rel)`` of the non-lone queries ``owned`` by this process (see ``_finish``).

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
    qn, *q_stats = _norm_stats(q.numpy(), qh)
    gn, *g_stats = (qn, *q_stats) if same else _norm_stats(g.numpy(), gh)
    bound = _bound(q.shape[1], tuple(q_stats), tuple(g_stats), kind)
    screen = _Screen(kind, qh, gh, bound) if bf16 else _Screen(kind, q, g, bound)
    rel_vals, rel_idx = _relevant_lists(problem, qn, gn, comm)
    t1 = time.perf_counter()
    state = _Rows(problem, rel_vals, screen, max(ks))
    rank_id, world = (0, 1) if comm is None else (comm.rank, comm.world)
    strips = _strips(problem, _strip_rows(problem, kind, chunk_size), rank_id, world)
    valid = problem.num_relevant > 0
    if same:
        # Every process needs every row's threshold (rows are columns of its strips): each
        # screens a share of the rows against the sample and the shares are gathered.
        pre_rows = np.flatnonzero(valid)
        share = (np.arange(pre_rows.shape[0]) * world) // max(pre_rows.shape[0], 1)
        _pre_pass(problem, screen, state, pre_rows[share == rank_id])
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
        _pre_pass(problem, screen, state, pre_rows)
        state.refresh(pre_rows)
    t2 = time.perf_counter()
    timings["relevant lists"] = timings.get("relevant lists", 0.0) + t1 - t0
    timings["pre-pass"] = timings.get("pre-pass", 0.0) + t2 - t1
    kept, overflow = _main_pass(problem, screen, state, strips, rel_idx, timings)
    counts = state.hist[:, 0]  # entries certainly above s_0, over everything screened
    if comm is not None:
        parts = comm.all_gather_arrays([counts, np.array([int(overflow)])])
        counts = np.sum([p[0] for p in parts], axis=0)
        overflow = any(int(p[1][0]) for p in parts)
    if overflow:
        raise ScreeningUnsuitable(f"more than {_MAX_KEPT} entries to keep (masses of ties?)")
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
    return _finish(problem, state, rel_idx, kept, owned, capped, (qn, gn), ks, timings)


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
