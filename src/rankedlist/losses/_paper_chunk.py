"""One chunk of queries of the paper kernel: loss, statistics and closed-form gradient (private).

:func:`paper_chunk` computes a chunk's ranked lists against every reference column with a few
in-place passes over preallocated ``c x M`` buffers; :func:`compact_chunk` first drops the columns
that are trivial for the whole chunk (most of a large memory bank) and runs it on the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from rankedlist.losses._excluded_pairs import Pairs
from rankedlist.losses._inputs import HyperParameters
from rankedlist.losses._workspace import work_buffers

__all__ = ["ChunkInputs", "ChunkSettings", "SelfPairs", "compact_chunk", "paper_chunk"]

# The self pairs of a chunk: ``(start, None)`` the diagonal of the batch against itself starting
# at column ``start``, ``(None, cols)`` one column per row, ``(rows, cols)`` some rows only.
SelfPairs = tuple[int, None] | tuple[torch.Tensor | None, torch.Tensor]


@dataclass(frozen=True)
class ChunkInputs:
    """One chunk of queries (c rows) and the reference set (M rows) they are ranked against.

    The rows' squared norms come with them: they are computed once per call, not per chunk.
    ``self_pairs`` and ``extra_pairs`` (rows relative to the chunk) are left out of the lists.
    """

    queries: torch.Tensor  # c x D, L2-normalised if the loss normalises
    query_sq_norms: torch.Tensor  # c
    query_labels: torch.Tensor  # c, class ids as floats
    reference: torch.Tensor  # M x D
    reference_sq_norms: torch.Tensor  # M
    reference_labels: torch.Tensor  # M, class ids as floats
    self_pairs: SelfPairs | None
    extra_pairs: Pairs | None


@dataclass(frozen=True)
class ChunkSettings:
    """What is the same for every chunk of one call.

    ``shift_neg``/``shift_pos``: the negative/positive weights need a shift by their row maximum
    (exponents that could overflow); ``z_offset``: the constant of ``z = offset - scale * d``,
    ``Tn alpha`` for ``Tn > 0``, else ``alpha`` (a 0-d tensor of the compute dtype).
    """

    shift_neg: bool
    shift_pos: bool
    need_grad: bool
    z_offset: torch.Tensor


def paper_chunk(
    chunk: ChunkInputs,
    hp: HyperParameters,
    settings: ChunkSettings,
    bufs: list[torch.Tensor],
    d2_ready: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Loss, statistics and closed-form gradient of one chunk of queries (all in-place work):
    per query ``loss, n_pos, n_neg, log S+, log S-`` and, if ``settings.need_grad``, the c x D
    gradient. ``d2_ready``: ``bufs[0]`` already holds the chunk's squared distances.

    Four ``c x M`` buffers and about 20 elementwise passes, fused by hand: each buffer is
    overwritten as soon as its content is dead (a row dot product is written over one of its
    operands, not into a scratch buffer). On CPU the passes run over column tiles of a few MB, so
    that they hit the cache rather than memory (the products stay on the whole chunk, where they
    are fastest); the row sums are accumulated over the tiles.
    """
    dist = bufs[0]
    c, m = dist.shape
    device = chunk.queries.device
    if not d2_ready:
        _squared_distances(chunk, dist)
    # A row shift needs the maximum over the whole row before any weight: one tile then.
    shift = settings.shift_neg or settings.shift_pos
    tile = max(1, m) if shift or device.type != "cpu" else _tile_cols(c)
    by_tile = _exclusions_by_tile(chunk.self_pairs, chunk.extra_pairs, c, m, tile, device)
    sums = torch.zeros(6, c, dtype=dist.dtype, device=dist.device)
    shifts = (None, None)
    for k, j in enumerate(range(0, m, tile)):
        cols = slice(j, j + tile)
        views = [buf[:, cols] for buf in bufs]
        labels = (chunk.query_labels, chunk.reference_labels[cols])
        shifts = _ranked_lists(views, labels, by_tile[k], hp, settings, sums)
    out, w_safe, v_safe = _chunk_losses(sums, shifts, hp)
    if not settings.need_grad:
        return out
    return out + (_chunk_gradient(chunk, bufs, hp, w_safe, v_safe, tile),)


def _chunk_losses(
    sums: torch.Tensor, shifts: tuple[torch.Tensor | None, torch.Tensor | None], hp: HyperParameters
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """``(loss, n_pos, n_neg, log S+, log S-)`` from the row sums of :func:`_ranked_lists` and
    its row shifts, and the safe weight sums ``W``, ``V`` (1 for an empty set) of the gradient."""
    n_neg, n_pos, w_sum, num_neg, v_sum, num_pos = sums.unbind(0)
    if hp.Tn == 0:
        w_sum = n_neg  # w = the mask
    if hp.Tp == 0:
        v_sum = n_pos
    s_neg, s_pos = shifts

    w_safe = torch.where(w_sum > 0, w_sum, torch.ones_like(w_sum))
    loss_neg = num_neg / w_safe
    log_s_neg = torch.log(w_sum)
    if s_neg is not None:
        log_s_neg = log_s_neg + s_neg
    v_safe = torch.where(v_sum > 0, v_sum, torch.ones_like(v_sum))
    loss_pos = num_pos / v_safe
    log_s_pos = torch.log(v_sum)
    if s_pos is not None:
        log_s_pos = log_s_pos + s_pos
    loss = hp.kP * loss_pos + hp.kN * loss_neg
    return (loss, n_pos, n_neg, log_s_pos, log_s_neg), w_safe, v_safe


def _chunk_gradient(
    chunk: ChunkInputs,
    bufs: list[torch.Tensor],
    hp: HyperParameters,
    w_safe: torch.Tensor,
    v_safe: torch.Tensor,
    tile: int,
) -> torch.Tensor:
    """The chunk's c x D gradient ``sum_j a_ij (x_i - g_j)`` from the ``w / d`` and ``v / d``
    that :func:`_ranked_lists` left in the buffers."""
    dist, neg, pos, work = bufs
    c, m = dist.shape
    kP, kN = hp.kP, hp.kN
    # a_ij = (-kN w_ij / W_i + kP v_ij / V_i) / d_ij. The row factor -kN / W_i is applied to the
    # c x D result of the product instead of the c x M matrix (one pass fewer): a = w + r v.
    scale_neg = -kN / w_safe
    scale_pos = kP / v_safe
    w, v = (work, neg if hp.Tp > 0 else pos) if hp.Tn > 0 else (neg, work if hp.Tp > 0 else pos)
    if kN != 0:
        w_scale, v_scale = None, (scale_pos / scale_neg).unsqueeze(1)
    else:
        w_scale, v_scale = scale_neg.unsqueeze(1), scale_pos.unsqueeze(1)
    row_sum = torch.zeros(c, dtype=dist.dtype, device=dist.device)
    for j in range(0, m, tile):
        cols = slice(j, j + tile)
        coef = w[:, cols]
        if w_scale is not None:
            coef.mul_(w_scale)
        row_sum += coef.addcmul_(v[:, cols], v_scale).sum(1)
    # sum_j a_ij (x_i - g_j) = x_i sum_j a_ij - (A @ G)_i
    xc = chunk.queries
    grad = torch.addmm(xc * row_sum.unsqueeze(1), w, chunk.reference, alpha=-1.0)
    if w_scale is None:
        grad.mul_(scale_neg.unsqueeze(1))
    return grad


def _ranked_lists(
    views: list[torch.Tensor],
    labels: tuple[torch.Tensor, torch.Tensor],
    exclusions: list,
    hp: HyperParameters,
    settings: ChunkSettings,
    sums: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One column tile: distances, masks, weights; adds the tile's row sums to ``sums``
    (n_neg, n_pos, W, sum w (alpha - d), V, sum v (d - b)) and, for the gradient, leaves w / d
    and v / d in the buffers. Returns the row shifts of the negative and positive exponents
    (``None`` where there is none; only with a single tile)."""
    dist, neg, pos, work = views
    yc, yg = labels
    z_offset = settings.z_offset
    s_neg = s_pos = None
    alpha, b = hp.alpha, hp.b
    # Clamp the rounding error of the distance expansion before the sqrt.
    dist.clamp_(min=0.0).sqrt_()

    # Masks as 0/1 floats: multiplying by them is cheaper than boolean indexing.
    notsame = pos
    torch.ne(yc.unsqueeze(1), yg.unsqueeze(0), out=notsame)
    torch.lt(dist, alpha, out=neg).mul_(notsame)  # N*: other label and d < alpha (strict)
    torch.gt(dist, b, out=work)
    # P*: same label and d > alpha - m (strict): gt - gt * notsame, written over notsame.
    torch.addcmul(work, work, notsame, value=-1.0, out=pos)
    # The self pair is excluded by index, never by value.
    for rows, cols in exclusions:
        if cols is None:  # the batch against itself: a diagonal starting at column `rows`
            c = neg.shape[0]
            neg[:, rows : rows + c].diagonal().zero_()
            pos[:, rows : rows + c].diagonal().zero_()
        elif rows is None:  # one self column per row
            neg.scatter_(1, cols.unsqueeze(1), 0.0)
            pos.scatter_(1, cols.unsqueeze(1), 0.0)
        else:
            neg[rows, cols] = 0.0
            pos[rows, cols] = 0.0
    sums[0] += neg.sum(1)
    sums[1] += pos.sum(1)

    # Negatives: w = exp(Tn (alpha - d)) as a masked softmax. Active exponents lie in
    # (0, Tn*alpha], so without a huge Tn*alpha no row shift is needed (every active w >= 1).
    if hp.Tn > 0:
        w = torch.add(z_offset, dist, alpha=-hp.Tn, out=work)  # z = Tn (alpha - d)
        if settings.shift_neg:  # (one tile)
            w.mul_(neg)
            s_neg = w.amax(1)  # max over the active set (inactive: 0 < active)
            w.sub_(s_neg.unsqueeze(1)).clamp_(max=0.0)
        w.exp_().mul_(neg)  # z is overwritten: it is recomputed below, over the dead mask
        sums[2] += w.sum(1)
        z = torch.add(z_offset, dist, alpha=-hp.Tn, out=neg)
        sums[3] += z.mul_(w).sum(1) / hp.Tn
        free = neg
    else:
        sums[3] += torch.add(z_offset, dist, alpha=-1.0, out=work).mul_(neg).sum(1)
        free = work

    # Positives: v = exp(Tp (d - b)), the plain mean for Tp = 0.
    if hp.Tp > 0:
        v = torch.sub(dist, b, out=free).mul_(hp.Tp)  # Tp (d - b)
        if settings.shift_pos:  # (one tile)
            v.mul_(pos)
            s_pos = v.amax(1)
            v.sub_(s_pos.unsqueeze(1)).clamp_(max=0.0)
        v.exp_().mul_(pos)
        sums[4] += v.sum(1)
        sums[5] += torch.sub(dist, b, out=pos).mul_(v).sum(1)  # over the dead mask
    else:
        sums[5] += torch.sub(dist, b, out=free).mul_(pos).sum(1)
    if settings.need_grad:  # w / d and v / d while the tile is in the cache; u := 0 where d = 0
        F.threshold_(dist, 0.0, math.inf)  # (duplicates, the self pair)
        (work if hp.Tn > 0 else neg).div_(dist)
        (free if hp.Tp > 0 else pos).div_(dist)
    return s_neg, s_pos


def _squared_distances(chunk: ChunkInputs, out: torch.Tensor) -> torch.Tensor:
    """``|x_i|^2 + |g_j|^2 - 2 x_i . g_j`` into ``out``: the norms are written first and the
    product accumulates onto them in place (``addmm`` with a broadcast input would copy it into
    ``out`` and need one more pass to add the other norms)."""
    torch.add(chunk.query_sq_norms.unsqueeze(1), chunk.reference_sq_norms.unsqueeze(0), out=out)
    return out.addmm_(chunk.queries, chunk.reference.T, alpha=-2.0)


# Candidate columns are those within alpha^2 + this of some query (squared distance): the slack
# absorbs the rounding difference between this product and the one on the compacted columns.
_CANDIDATE_SLACK = 1e-4
# Above this share of candidate columns the compaction saves nothing: the dense chunk runs.
_DENSE_SHARE = 0.5


def compact_chunk(
    chunk: ChunkInputs, hp: HyperParameters, settings: ChunkSettings, bufs: list[torch.Tensor]
) -> tuple[tuple[torch.Tensor, ...], bool]:
    """:func:`paper_chunk` on the reference columns that can be active for this chunk; returns
    its outputs and whether it had to run on every column.

    A column is trivial for every query of the chunk when its label is none of theirs (it can
    only be a negative) and it lies beyond alpha from all of them: it has weight 0 in every
    ranked list of the chunk. Against a large memory bank most columns are like that, so after
    the one product that finds them (into ``bufs[0]``: the chunk's squared distances) the ranked
    lists are computed on the remaining columns only: the per-pair work and the gradient product
    shrink from c x M to c x M' (exactly the same result: only zero terms are dropped). When
    most columns are candidates, the dense chunk goes on from the distances already computed.
    """
    d2 = bufs[0]
    c, m = d2.shape
    xc, yg, device = chunk.queries, chunk.reference_labels, chunk.queries.device
    _squared_distances(chunk, d2)
    near = d2.amin(0) < hp.alpha**2 + _CANDIDATE_SLACK
    near |= torch.isin(yg, chunk.query_labels)  # possible positives, whatever their distance
    cols = torch.nonzero(near).squeeze(1)
    m_kept = cols.shape[0]
    if m_kept > _DENSE_SHARE * m:
        return paper_chunk(chunk, hp, settings, bufs, d2_ready=True), True
    if m_kept == 0:  # every set of the chunk is empty: loss 0, gradient 0
        zeros, empty = xc.new_zeros(c), xc.new_full((c,), -math.inf)
        out = (zeros, zeros, zeros.clone(), empty, empty.clone())
        return out + ((torch.zeros_like(xc),) if settings.need_grad else ()), False

    # The excluded pairs (self, older copies) as (row, compacted column); pairs on a dropped
    # column are dropped with it.
    rows, pair_cols = _as_pairs(chunk.self_pairs, chunk.extra_pairs, c, device)
    where = torch.full((m,), -1, dtype=torch.long, device=device)
    where[cols] = torch.arange(m_kept, device=device)
    pair_cols = where[pair_cols]
    kept = pair_cols >= 0
    compacted = replace(
        chunk,
        reference=chunk.reference[cols],
        reference_sq_norms=chunk.reference_sq_norms[cols],
        reference_labels=yg[cols],
        self_pairs=(rows[kept], pair_cols[kept]) if bool(kept.any()) else None,
        extra_pairs=None,
    )
    # The full-width buffers are dead from here on: the small ones may reuse their memory.
    small = work_buffers(c, m_kept, xc.dtype, device)
    return paper_chunk(compacted, hp, settings, small), False


def _as_pairs(
    self_pairs: SelfPairs | None, extra: Pairs | None, c: int, device: torch.device
) -> Pairs:
    """The self pairs (``None``, ``(None, cols)`` one per row, or ``(rows, cols)``) and the
    extra pairs as one ``(rows, cols)`` list."""
    rows, cols = [], []
    if self_pairs is not None:
        r, k = self_pairs
        rows.append(torch.arange(c, device=device) if r is None else r)
        cols.append(k)
    if extra is not None:
        rows.append(extra[0])
        cols.append(extra[1])
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    return torch.cat(rows), torch.cat(cols)


# Column tiles of the elementwise passes on CPU: about this many elements per buffer (2 MiB in
# float32, four buffers in the L3 cache), at least _MIN_TILE_COLS columns (per-call overhead).
_TILE_ELEMENTS = 512 * 1024
_MIN_TILE_COLS = 1024


def _tile_cols(c: int) -> int:
    """Columns per tile for a chunk of ``c`` query rows."""
    return max(_MIN_TILE_COLS, _TILE_ELEMENTS // max(c, 1))


def _exclusions_by_tile(
    excluded: SelfPairs | None, extra: Pairs | None, c: int, m: int, tile: int, device: torch.device
) -> list[list]:
    """Each column tile's excluded pairs: the given forms when there is one tile, else one
    ``(rows, cols)`` list per tile, columns relative to the tile."""
    n_tiles = max(1, -(-m // tile))
    if n_tiles == 1:
        return [[pairs for pairs in (excluded, extra) if pairs is not None]]
    if excluded is not None and excluded[1] is None:  # a diagonal starting at column `start`
        start, diag = excluded[0], torch.arange(c, device=device)
        excluded = (diag, diag + start)
    rows, cols = _as_pairs(excluded, extra, c, device)
    cols, order = torch.sort(cols)
    rows = rows[order]
    edges = torch.arange(n_tiles + 1, device=device) * tile
    bounds = torch.searchsorted(cols, edges).tolist()
    return [
        [(rows[lo:hi], cols[lo:hi] - k * tile)] if hi > lo else []
        for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]
