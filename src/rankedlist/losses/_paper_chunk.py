"""One chunk of queries of the paper kernel: loss, statistics and closed-form gradient (private).

:func:`paper_chunk` computes a chunk's ranked lists against every reference column with a few
in-place passes over preallocated ``c x M`` buffers; :func:`compact_chunk` first drops the columns
that are trivial for the whole chunk (most of a large memory bank) and runs it on the rest.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rankedlist.losses._workspace import work_buffers

if TYPE_CHECKING:
    from rankedlist.losses._kernels import HyperParameters

__all__ = ["compact_chunk", "paper_chunk"]


def paper_chunk(
    xc: torch.Tensor,
    sqc: torch.Tensor,
    g: torch.Tensor,
    sqg: torch.Tensor,
    yc: torch.Tensor,
    yg: torch.Tensor,
    excluded: tuple | None,
    extra: tuple[torch.Tensor, torch.Tensor] | None,
    hp: HyperParameters,
    kP: float,
    kN: float,
    shift_neg: bool,
    shift_pos: bool,
    need_grad: bool,
    bufs: list[torch.Tensor],
    consts: dict[str, torch.Tensor],
    d2_ready: bool = False,
):
    """Loss, statistics and closed-form gradient of one chunk of queries (all in-place work);
    ``d2_ready``: ``bufs[0]`` already holds the chunk's squared distances.

    Four ``c x M`` buffers and about 20 elementwise passes, fused by hand: each buffer is
    overwritten as soon as its content is dead (a row dot product is written over one of its
    operands, not into a scratch buffer). On CPU the passes run over column tiles of a few MB, so
    that they hit the cache rather than memory (the products stay on the whole chunk, where they
    are fastest); the row sums are accumulated over the tiles.
    """
    dist, neg, pos, work = bufs
    c, m = dist.shape
    if not d2_ready:
        _squared_distances(xc, sqc, g, sqg, dist)
    # A row shift needs the maximum over the whole row before any weight: one tile then.
    tile = max(1, m) if shift_neg or shift_pos or xc.device.type != "cpu" else _tile_cols(c)
    by_tile = _exclusions_by_tile(excluded, extra, c, m, tile, xc.device)
    sums = torch.zeros(6, c, dtype=dist.dtype, device=dist.device)
    for k, j in enumerate(range(0, m, tile)):
        cols = slice(j, j + tile)
        views = [buf[:, cols] for buf in bufs]
        _ranked_lists(
            views, yc, yg[cols], by_tile[k], hp, shift_neg, shift_pos, need_grad, consts, sums
        )
    n_neg, n_pos, w_sum, num_neg, v_sum, num_pos = sums.unbind(0)
    if hp.Tn == 0:
        w_sum = n_neg  # w = the mask
    if hp.Tp == 0:
        v_sum = n_pos
    s_neg, s_pos = consts.pop("s_neg", None), consts.pop("s_pos", None)

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
    loss = kP * loss_pos + kN * loss_neg
    if not need_grad:
        return loss, n_pos, n_neg, log_s_pos, log_s_neg

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
    grad = torch.addmm(xc * row_sum.unsqueeze(1), w, g, alpha=-1.0)
    if w_scale is None:
        grad.mul_(scale_neg.unsqueeze(1))
    return loss, n_pos, n_neg, log_s_pos, log_s_neg, grad


def _ranked_lists(views, yc, yg, exclusions, hp, shift_neg, shift_pos, need_grad, consts,
                  sums) -> None:  # fmt: skip
    """One column tile: distances, masks, weights; adds the tile's row sums to ``sums``
    (n_neg, n_pos, W, sum w (alpha - d), V, sum v (d - b)) and, for the gradient, leaves w / d
    and v / d in the buffers."""
    dist, neg, pos, work = views
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
        w = torch.add(consts["z_offset"], dist, alpha=-hp.Tn, out=work)  # z = Tn (alpha - d)
        if shift_neg:  # (one tile)
            w.mul_(neg)
            s_neg = consts["s_neg"] = w.amax(1)  # max over the active set (inactive: 0 < active)
            w.sub_(s_neg.unsqueeze(1)).clamp_(max=0.0)
        w.exp_().mul_(neg)  # z is overwritten: it is recomputed below, over the dead mask
        sums[2] += w.sum(1)
        z = torch.add(consts["z_offset"], dist, alpha=-hp.Tn, out=neg)
        sums[3] += z.mul_(w).sum(1) / hp.Tn
        free = neg
    else:
        sums[3] += torch.add(consts["z_offset"], dist, alpha=-1.0, out=work).mul_(neg).sum(1)
        free = work

    # Positives: v = exp(Tp (d - b)), the plain mean for Tp = 0.
    if hp.Tp > 0:
        v = torch.sub(dist, b, out=free).mul_(hp.Tp)  # Tp (d - b)
        if shift_pos:  # (one tile)
            v.mul_(pos)
            s_pos = consts["s_pos"] = v.amax(1)
            v.sub_(s_pos.unsqueeze(1)).clamp_(max=0.0)
        v.exp_().mul_(pos)
        sums[4] += v.sum(1)
        sums[5] += torch.sub(dist, b, out=pos).mul_(v).sum(1)  # over the dead mask
    else:
        sums[5] += torch.sub(dist, b, out=free).mul_(pos).sum(1)
    if need_grad:  # w / d and v / d while the tile is in the cache; u_ij := 0 where d_ij = 0
        F.threshold_(dist, 0.0, math.inf)  # (duplicates, the self pair)
        (work if hp.Tn > 0 else neg).div_(dist)
        (free if hp.Tp > 0 else pos).div_(dist)


def _squared_distances(xc, sqc, g, sqg, out: torch.Tensor) -> torch.Tensor:
    """``|x_i|^2 + |g_j|^2 - 2 x_i . g_j`` into ``out``: the norms are written first and the
    product accumulates onto them in place (``addmm`` with a broadcast input would copy it into
    ``out`` and need one more pass to add the other norms)."""
    torch.add(sqc.unsqueeze(1), sqg.unsqueeze(0), out=out)
    return out.addmm_(xc, g.T, alpha=-2.0)


# Candidate columns are those within alpha^2 + this of some query (squared distance): the slack
# absorbs the rounding difference between this product and the one on the compacted columns.
_CANDIDATE_SLACK = 1e-4
# Above this share of candidate columns the compaction saves nothing: the dense chunk runs.
_DENSE_SHARE = 0.5


def compact_chunk(xc, sqc, g, sqg, yc, yg, self_pairs, extra, hp, kP, kN, shift_neg, shift_pos,
                  need_grad, bufs, consts):  # fmt: skip
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
    _squared_distances(xc, sqc, g, sqg, d2)
    near = d2.amin(0) < hp.alpha**2 + _CANDIDATE_SLACK
    near |= torch.isin(yg, yc)  # possible positives, whatever their distance
    cols = torch.nonzero(near).squeeze(1)
    m_kept = cols.shape[0]
    if m_kept > _DENSE_SHARE * m:
        out = paper_chunk(xc, sqc, g, sqg, yc, yg, self_pairs, extra, hp, kP, kN, shift_neg,
                          shift_pos, need_grad, bufs, consts, d2_ready=True)  # fmt: skip
        return out, True
    if m_kept == 0:  # every set of the chunk is empty: loss 0, gradient 0
        zeros, empty = xc.new_zeros(c), xc.new_full((c,), -math.inf)
        out = (zeros, zeros, zeros.clone(), empty, empty.clone())
        return out + ((torch.zeros_like(xc),) if need_grad else ()), False

    # The excluded pairs (self, older copies) as (row, compacted column); pairs on a dropped
    # column are dropped with it.
    rows, pair_cols = _as_pairs(self_pairs, extra, c, xc.device)
    where = torch.full((m,), -1, dtype=torch.long, device=xc.device)
    where[cols] = torch.arange(m_kept, device=xc.device)
    pair_cols = where[pair_cols]
    kept = pair_cols >= 0
    excluded = (rows[kept], pair_cols[kept]) if bool(kept.any()) else None
    # The full-width buffers are dead from here on: the small ones may reuse their memory.
    small = work_buffers(c, m_kept, xc.dtype, xc.device)
    out = paper_chunk(xc, sqc, g[cols], sqg[cols], yc, yg[cols], excluded, None, hp, kP, kN,
                      shift_neg, shift_pos, need_grad, small, consts)  # fmt: skip
    return out, False


def _as_pairs(self_pairs, extra, c: int, device: torch.device):
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


def _exclusions_by_tile(excluded, extra, c: int, m: int, tile: int, device: torch.device):
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
