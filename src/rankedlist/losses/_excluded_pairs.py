"""Query-reference pairs left out of the ranked lists, beyond each query's own row (private).

Copies of a query's sample (the same dataset index) are excluded like the self pair: another copy
in the batch (the P x K sampler repeats the images of a class smaller than K) or an older copy in a
memory bank (embedded at an earlier iteration). They are kept as a sparse list
``(query rows, reference columns)`` sorted by query row, so a chunk of queries finds its pairs
with a binary search and no ``queries x references`` mask is ever built.
"""

from __future__ import annotations

import torch

__all__ = ["copy_pairs", "pair_bounds", "pairs_between", "pairs_in_rows", "same_sample_pairs"]

Pairs = tuple[torch.Tensor, torch.Tensor]


def pair_bounds(pairs: Pairs | None, starts: list[int]) -> list[int] | None:
    """Where each chunk's rows begin in the row-sorted pair list (one sync for all chunks)."""
    if pairs is None:
        return None
    edges = torch.tensor(starts, dtype=pairs[0].dtype, device=pairs[0].device)
    return torch.searchsorted(pairs[0], edges).tolist()


def pairs_between(
    pairs: Pairs | None,
    bounds: list[int] | None,
    chunk: int,
    start: int,
) -> Pairs | None:
    """The pairs whose query row lies in chunk ``chunk``, rows made relative to ``start``."""
    if pairs is None or bounds is None or bounds[chunk] == bounds[chunk + 1]:
        return None
    lo, hi = bounds[chunk], bounds[chunk + 1]
    return pairs[0][lo:hi] - start, pairs[1][lo:hi]


def pairs_in_rows(pairs: Pairs | None, start: int, stop: int) -> Pairs | None:
    """The row-sorted ``pairs`` with a query row in ``[start, stop)``, rows relative to start."""
    return pairs_between(pairs, pair_bounds(pairs, [start, stop]), 0, start)


def same_sample_pairs(query_ids: torch.Tensor, ref_ids: torch.Tensor, col_offset: int = 0) -> Pairs:
    """Every ``(i, j)`` with ``query_ids[i] == ref_ids[j]``, sorted by ``i``; ``j + col_offset``.

    One sort of ``ref_ids`` and two binary searches: no ``len(query_ids) x len(ref_ids)`` mask
    (65,536 memory rows x 512 queries would be 32 M comparisons every step).
    """
    device = query_ids.device
    ref_ids = ref_ids.to(device)
    sorted_ids, order = torch.sort(ref_ids)
    lo = torch.searchsorted(sorted_ids, query_ids, right=False)
    hi = torch.searchsorted(sorted_ids, query_ids, right=True)
    counts = hi - lo
    rows = torch.repeat_interleave(torch.arange(query_ids.shape[0], device=device), counts)
    # Position of each pair inside its query's run of matches.
    firsts = torch.repeat_interleave(lo, counts)
    within = torch.arange(rows.shape[0], device=device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    cols = order[firsts + within] + col_offset
    return rows, cols


def copy_pairs(
    query_ids: torch.Tensor, ref_ids: torch.Tensor, self_cols: torch.Tensor | None
) -> Pairs | None:
    """The ``(i, j)`` of :func:`same_sample_pairs` other than each query's own column
    ``self_cols[i]`` (``-1`` or ``None``: none), sorted by ``i``; None when there are none (the
    usual batch: no copies, and the loss runs exactly as without indices)."""
    rows, cols = same_sample_pairs(query_ids, ref_ids)
    if self_cols is not None:
        keep = cols != self_cols[rows]
        rows, cols = rows[keep], cols[keep]
    return (rows, cols) if rows.numel() else None
