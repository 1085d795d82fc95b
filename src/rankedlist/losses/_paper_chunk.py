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


def _rowdot(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(1)`` using a preallocated scratch buffer for the product."""
    return torch.mul(a, b, out=scratch).sum(1)


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
    ``d2_ready``: ``bufs[0]`` already holds the chunk's squared distances."""
    dist, notsame, neg, pos, work, coef, scratch = bufs
    alpha, b = hp.alpha, hp.b

    # Distances from one product; clamp the rounding error of the expansion before the sqrt.
    if not d2_ready:
        _squared_distances(xc, sqc, g, sqg, dist)
    dist.clamp_(min=0.0).sqrt_()

    # Masks as 0/1 floats: multiplying by them is cheaper than boolean indexing.
    torch.ne(yc.unsqueeze(1), yg.unsqueeze(0), out=notsame)
    torch.lt(dist, alpha, out=neg).mul_(notsame)  # N*: other label and d < alpha (strict)
    torch.gt(dist, b, out=pos)
    pos.addcmul_(pos, notsame, value=-1.0)  # P*: same label and d > alpha - m (strict)
    # The self pair is excluded by index, never by value.
    if excluded is not None:
        rows, cols = excluded
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
    if extra is not None:  # e.g. a memory bank's older copies of the query (same sample)
        neg[extra] = 0.0
        pos[extra] = 0.0
    n_neg = neg.sum(1)
    n_pos = pos.sum(1)

    # Negatives: w = exp(Tn (alpha - d)) as a masked softmax. Active exponents lie in
    # (0, Tn*alpha], so without a huge Tn*alpha no row shift is needed (every active w >= 1).
    if hp.Tn > 0:
        torch.add(consts["z_offset"], dist, alpha=-hp.Tn, out=work)  # z = Tn (alpha - d)
        if shift_neg:
            torch.mul(work, neg, out=coef)
            s_neg = coef.amax(1)  # max over the active set (inactive entries are 0 < active)
            coef.sub_(s_neg.unsqueeze(1)).clamp_(max=0.0).exp_().mul_(neg)
        else:
            s_neg = None
            torch.exp(work, out=coef).mul_(neg)
        w_sum = coef.sum(1)
        num_neg = _rowdot(coef, work, scratch) / hp.Tn
    else:
        torch.add(consts["z_offset"], dist, alpha=-1.0, out=work)  # alpha - d
        s_neg = None
        coef.copy_(neg)
        w_sum = n_neg
        num_neg = _rowdot(coef, work, scratch)
    w_safe = torch.where(w_sum > 0, w_sum, torch.ones_like(w_sum))
    loss_neg = num_neg / w_safe
    log_s_neg = torch.log(w_sum)
    if s_neg is not None:
        log_s_neg = log_s_neg + s_neg
    if need_grad:
        coef.mul_((-kN / w_safe).unsqueeze(1))  # -kN w_ij / W_i

    # Positives: v = exp(Tp (d - b)), the plain mean for Tp = 0.
    torch.sub(dist, b, out=work)  # d - b
    s_pos = None
    if hp.Tp > 0:
        v = neg  # the negative mask is no longer needed
        torch.mul(work, hp.Tp, out=v)
        if shift_pos:
            v.mul_(pos)
            s_pos = v.amax(1)
            v.sub_(s_pos.unsqueeze(1)).clamp_(max=0.0)
        v.exp_().mul_(pos)
        v_sum = v.sum(1)
    else:
        v = pos
        v_sum = n_pos
    v_safe = torch.where(v_sum > 0, v_sum, torch.ones_like(v_sum))
    loss_pos = _rowdot(v, work, scratch) / v_safe
    log_s_pos = torch.log(v_sum)
    if s_pos is not None:
        log_s_pos = log_s_pos + s_pos

    loss = kP * loss_pos + kN * loss_neg
    if not need_grad:
        return loss, n_pos, n_neg, log_s_pos, log_s_neg

    coef.addcmul_(v, (kP / v_safe).unsqueeze(1))
    # a_ij = coef_ij / d_ij, with u_ij := 0 where d_ij = 0 (duplicates, the self pair).
    F.threshold_(dist, 0.0, math.inf)
    coef.div_(dist)
    row_sum = coef.sum(1)
    # sum_j a_ij (x_i - g_j) = x_i sum_j a_ij - (A @ G)_i
    grad = torch.addmm(xc * row_sum.unsqueeze(1), coef, g, alpha=-1.0)
    return loss, n_pos, n_neg, log_s_pos, log_s_neg, grad


def _squared_distances(xc, sqc, g, sqg, out: torch.Tensor) -> torch.Tensor:
    """``|x_i|^2 + |g_j|^2 - 2 x_i . g_j`` into ``out`` (one product, one pass)."""
    torch.addmm(sqg.unsqueeze(0), xc, g.T, alpha=-2.0, out=out)
    return out.add_(sqc.unsqueeze(1))


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
