"""Exact ranking primitives on one chunk of the similarity matrix.

The ranking is the one a stable sort by descending similarity gives: between equal
similarities the lower gallery index ranks first. ``torch.topk`` breaks ties arbitrarily,
so the helpers below repair the order inside the returned list and, for the rare rows where
the k-th value ties with items left outside, recompute the selection exactly.

Counting is done by comparing into a preallocated float buffer and summing in float32: on
CPU, torch's integer/bool reductions are several times slower than its float sum, and the
partial sums of 0/1 values are exact integers as long as a row is shorter than 2**24.
"""

from __future__ import annotations

import numpy as np
import torch

_EXACT_FLOAT_COUNT = 2**24


def similarities(q: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``q @ g.T`` written into ``out`` (float32), on the tensors' device.

    On CPU the product goes through numpy's BLAS (OpenBLAS in the wheels) rather than torch's
    (MKL): on AMD CPUs MKL's sgemm measured 1.3-1.6x slower here, and this product is
    nearly all of an evaluation's time. Both are plain float32 GEMMs.
    """
    if q.device.type == "cpu":
        np.matmul(q.numpy(), g.numpy().T, out=out.numpy())
        return out
    return torch.matmul(q, g.T, out=out)


def count_greater(
    s: torch.Tensor, thr: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Per row, the number of entries of ``s`` (r x M) strictly greater than ``thr`` (r,)."""
    if s.shape[1] >= _EXACT_FLOAT_COUNT:
        return (s > thr[:, None]).sum(1)
    buf = out[: s.shape[0]] if out is not None else torch.empty_like(s)
    torch.gt(s, thr[:, None], out=buf)
    return buf.sum(1).round_().long()


def count_equal_before(s: torch.Tensor, thr: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Per row, the number of entries equal to ``thr`` at a column index lower than ``before``."""
    cols = torch.arange(s.shape[1], device=s.device)
    return ((s == thr[:, None]) & (cols[None, :] < before[:, None])).sum(1)


def _sort_list(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order short per-row lists by (similarity descending, index ascending)."""
    order = torch.argsort(idx, dim=1, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = torch.argsort(vals, dim=1, descending=True, stable=True)
    return vals.gather(1, order), idx.gather(1, order)


def _exact_topk_rows(
    s: torch.Tensor, kth: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact stable top-k of rows whose k-th value ``kth`` also occurs outside the top k."""
    greater = s > kth[:, None]
    tied = s == kth[:, None]
    need = k - greater.sum(1, keepdim=True)
    # Among the tied entries keep the lowest-index ones: a cumulative count along the row.
    keep = greater | (tied & (torch.cumsum(tied, dim=1) <= need))
    idx = keep.nonzero()[:, 1].reshape(s.shape[0], k)  # row-major: ascending index per row
    return _sort_list(s.gather(1, idx), idx)


def stable_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` entries of each row of ``s`` in stable descending order.

    Returns ``(values, indices)`` of shape (rows, k). Exact, including ties: the tie test
    costs nothing extra because one more value is selected and compared with the k-th.
    """
    m = s.shape[1]
    if k > m:
        raise ValueError(f"cannot select {k} items from {m}")
    kk = min(k + 1, m)
    vals, idx = torch.topk(s, kk, dim=1, largest=True, sorted=True)
    if kk > k:
        boundary = vals[:, k] == vals[:, k - 1]
        vals, idx = vals[:, :k], idx[:, :k]
    else:
        boundary = None
    vals, idx = _sort_list(vals, idx)
    if boundary is not None and bool(boundary.any()):
        rows = boundary.nonzero()[:, 0]
        fixed_vals, fixed_idx = _exact_topk_rows(s[rows], vals[rows, k - 1], k)
        vals, idx = vals.clone(), idx.clone()
        vals[rows], idx[rows] = fixed_vals, fixed_idx
    return vals, idx
