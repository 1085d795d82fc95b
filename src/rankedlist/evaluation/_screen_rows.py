"""Per-query thresholds of the screen (``_screened``), only ever raised as entries arrive.

**Which ``s_q`` matter** (``Rows``), known better as the pass goes on: ``r_q`` is out of the
top R for good once ``q`` + (entries certainly above ``s_q``, ``lo > s_q``) reaches R; the
others form a prefix ``r_0 .. r_{p-1}``. ``s_0`` stops mattering for Recall@K once
``K_max = max(ks)`` entries are certainly above it. A pre-pass over a sample of 512 columns
(screened alike, ``_screen_blocks``) starts these counts. The screen keeps an entry of row i
when ``hi`` reaches the smallest ``s_q`` that still matters; ``Rows`` holds that value as a
threshold on the bits of ``S~`` (``Screen.keys``), so the screen is one integer comparison.

The counts are taken against the relevant values with ``searchsorted`` on one sorted array of
(row, value) keys (``_RelKeys``), for whole batches of entries at once.
"""

from __future__ import annotations

import numpy as np

from rankedlist.evaluation._inputs import RetrievalProblem
from rankedlist.evaluation._screen_bound import Screen, down32


def _ord_key(v32: np.ndarray) -> np.ndarray:
    """Order-preserving uint32-range int64 keys of float32 values (``-0.0`` below ``0.0``)."""
    b = v32.view(np.int32).astype(np.int64)
    return np.where(b < 0, -(b & 0x7FFFFFFF) - 1, b) + 2**31


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


def prefix(certain: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per row, the number p of relevant items r_q (stable order) that may be in the top R:
    those with ``q + certain[q] < R`` (a prefix, since both terms grow with q)."""
    q = np.arange(certain.shape[1])[None, :]
    return ((q + certain < r[:, None]) & (q < r[:, None])).sum(1)


class Rows:
    """Per-query thresholds of the screen, only ever raised as kept entries arrive.

    ``certain[i, q]``: entries known to be strictly above the relevant value ``s_q`` (lower
    bound above it), kept as a histogram over ``c = #{q: s_q >= lo}`` and summed on demand.
    Relevant items with ``q + certain[i, q] >= R`` are out of the top R for good; of the
    others only ``s_(p-1)``, the smallest, matters for the screen (``prefix``). Recall@K
    needs ``s_0`` until ``certain[i, 0] >= K_max``.
    """

    def __init__(
        self, problem: RetrievalProblem, rel_vals: np.ndarray, screen: Screen, k_max: int
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
        p = np.minimum(prefix(certain, self.r[rows]), self.p_best[rows])
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
        self.thr[rows] = np.where(slow, down32(theta), self.screen.key_value(key))

    def add(self, rows: np.ndarray, vals: np.ndarray) -> None:
        """Take kept entries (screened values) of ``rows`` into the thresholds."""
        if rows.size == 0:
            return
        lo32 = down32(self.bound.lower(vals.astype(np.float64)))
        c = self.keys.count_ge(rows, lo32)
        low = c < self.r[rows]  # above some relevant value: changes a count
        n = self.hist.shape[0]
        self.hist += self.keys.histogram(rows[low], c[low], n)
        touched = np.flatnonzero(np.bincount(rows[low], minlength=n))
        self.refresh(touched)
