"""Exact k-nearest-neighbour lists by cosine similarity (faiss on CPU arrays, torch otherwise)."""

from __future__ import annotations

import math

import numpy as np
import torch

from rankedlist.evaluation._inputs import ArrayLike, as_embeddings, auto_chunk_size
from rankedlist.evaluation._ranking import similarities, stable_topk

BACKENDS = ("auto", "faiss", "torch")


def nearest_neighbors(
    query: ArrayLike,
    gallery: ArrayLike | None,
    k: int,
    exclude_self: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> tuple[ArrayLike, ArrayLike]:
    """The ``k`` most cosine-similar gallery items of each query, most similar first.

    Ties are ordered as a stable sort by descending similarity would: lower gallery index
    first, also at the k-th position (both back ends give the same lists).

    Args:
        query: (N, D) tensor (any device, any float dtype) or numpy array; L2-normalised here.
        gallery: (M, D) embeddings, or ``None`` for the query set itself.
        k: number of neighbours, at most M (M - 1 with ``exclude_self``).
        exclude_self: drop gallery item ``i`` from query ``i``'s list (by index, so
            duplicates of the query are still found); needs the query set as the gallery.
        backend: ``"faiss"`` (IndexFlatIP, CPU only), ``"torch"`` (chunked matrix products on
            the tensors' device) or ``"auto"``: faiss for CPU inputs, where its fused BLAS +
            heap search is faster than torch's product + ``topk``, torch on a GPU.
        chunk_size: queries per chunk for the torch back end.

    Returns:
        ``(similarities, indices)``, each (N, k): float32 and int64, numpy arrays when
        ``query`` is a numpy array, otherwise tensors on ``query``'s device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    q = as_embeddings(query, "query")
    g = q if gallery is None or gallery is query else as_embeddings(gallery, "gallery")
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"query has embedding dimension {q.shape[1]} but gallery has {g.shape[1]}")
    if g.device != q.device:
        raise ValueError(f"query is on {q.device} but gallery on {g.device}: use one device")
    if exclude_self and g.shape[0] != q.shape[0]:
        raise ValueError(
            "exclude_self=True needs the query set as the gallery (same number of rows), "
            f"got {q.shape[0]} queries and {g.shape[0]} gallery items"
        )
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    available = g.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"k must be in [1, {available}] (the retrievable items), got {k}")
    if backend == "auto":
        backend = "faiss" if q.device.type == "cpu" else "torch"
    if backend == "faiss":
        if q.device.type != "cpu":
            raise ValueError("the faiss back end needs CPU inputs: use backend='torch' on a GPU")
        self_index = torch.arange(q.shape[0]) if exclude_self else None
        sims, idx = faiss_search(q, g, int(k), self_index)
    else:
        chunk = chunk_size or auto_chunk_size(g.shape[0])
        sims, idx = _torch_search(q, g, int(k), exclude_self, chunk)
    if isinstance(query, np.ndarray):
        return sims.cpu().numpy(), idx.cpu().numpy()
    return sims, idx


def _torch_search(
    q: torch.Tensor, g: torch.Tensor, k: int, exclude_self: bool, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked ``q @ g.T`` and an exact stable top-k per chunk."""
    n = q.shape[0]
    sims = torch.empty(n, k, device=q.device)
    idx = torch.empty(n, k, dtype=torch.long, device=q.device)
    buf = torch.empty(min(chunk, n), g.shape[0], device=q.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        s = similarities(q[start:stop], g, out=buf[: stop - start])
        if exclude_self:
            rows = torch.arange(stop - start, device=q.device)
            s[rows, rows + start] = -math.inf
        sims[start:stop], idx[start:stop] = stable_topk(s, k)
    return sims, idx


def faiss_search(
    q: torch.Tensor, g: torch.Tensor, k: int, self_index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """IndexFlatIP search of k (+1) neighbours of CPU float32 rows, put in the stable order.

    ``self_index[i]`` (optional) is the gallery row excluded from query ``i``'s list (its own
    item when ``q`` is a subset of the gallery's rows). faiss orders equal similarities
    arbitrarily; the list is re-sorted, and the rows whose last kept value ties with the
    next one (where the selection itself may differ) are recomputed exactly with torch, so
    the result equals the torch back end's.
    """
    import faiss  # heavy, optional at import time

    qn = np.ascontiguousarray(q.numpy())
    gn = qn if g is q else np.ascontiguousarray(g.numpy())
    index = faiss.IndexFlatIP(gn.shape[1])
    index.add(gn)
    exclude_self = self_index is not None
    extra = 1 + int(exclude_self)  # one more to detect ties at the cut, one for self
    kk = min(k + extra, gn.shape[0])
    dist, ind = index.search(qn, kk)
    sims, idx = torch.from_numpy(dist), torch.from_numpy(ind)
    n = qn.shape[0]
    if exclude_self:
        # Drop the own item by index; rows where it fell outside the list drop their last.
        is_self = idx == self_index[:, None]
        no_self = ~is_self.any(1)
        is_self[no_self, -1] = True
        sims = sims[~is_self].reshape(n, kk - 1)
        idx = idx[~is_self].reshape(n, kk - 1)
    if sims.shape[1] > k:
        boundary = sims[:, k] == sims[:, k - 1]
        sims, idx = sims[:, :k], idx[:, :k]
    else:
        boundary = torch.zeros(n, dtype=torch.bool)
    order = torch.argsort(idx, dim=1, stable=True)
    sims, idx = sims.gather(1, order), idx.gather(1, order)
    order = torch.argsort(sims, dim=1, descending=True, stable=True)
    sims, idx = sims.gather(1, order).contiguous(), idx.gather(1, order).contiguous()
    if bool(boundary.any()):
        rows = boundary.nonzero()[:, 0]
        s = q[rows] @ g.T
        if exclude_self:
            s[torch.arange(rows.shape[0]), self_index[rows]] = -math.inf
        sims[rows], idx[rows] = stable_topk(s, k)
    return sims, idx.long()
