"""The Ranked List Loss for ``gradient="autograd"`` (private): every quantity is differentiated.

A plain implementation over a ``queries x references`` block: distances, masks and the weights as
masked softmaxes, all live (the weights and the gallery receive gradient too, what PML does); it
passes ``torch.autograd.gradcheck``. The paper's gradient has its own chunked kernel in
:mod:`rankedlist.losses._kernels`.
"""

from __future__ import annotations

import math

import torch

from rankedlist.losses._inputs import HyperParameters
from rankedlist.losses._kernels import autocast_disabled

__all__ = ["autograd_rows"]


def _masked_weighted_mean(
    values: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``sum softmax_mask(logits) * values`` and ``log sum_mask exp(logits)``.

    Differentiable everywhere (also through the weights); an empty row gives 0 and ``-inf``.
    """
    logits = logits.masked_fill(~mask, -math.inf)
    if logits.shape[1] == 0:  # an empty reference set: amax over zero columns raises
        shift = logits.new_zeros(logits.shape[0], 1)
    else:
        shift = logits.detach().amax(1, keepdim=True)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    e = torch.exp(logits - shift)  # exactly 0 off the mask, with a zero gradient there
    s = e.sum(1)
    has = s > 0
    s_safe = torch.where(has, s, torch.ones_like(s))
    mean = (e * values).sum(1) / s_safe
    log_s = torch.where(has, shift.squeeze(1) + torch.log(s_safe), torch.full_like(s, -math.inf))
    return mean, log_s


class _GramProduct(torch.autograd.Function):
    """``a @ b.T`` whose backward products also run with autocast off.

    The forward pass already runs with autocast off, but the autograd engine runs the backward
    pass under the autocast state of the ``backward()`` call: called inside an autocast region, it
    would compute the two gradient products of a plain ``a @ b.T`` in float16/bfloat16. Double
    backward still works (the backward is made of differentiable operations).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(a, b)
        return a @ b.T

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        a, b = ctx.saved_tensors
        with autocast_disabled(grad.device):
            grad_a = grad @ b if ctx.needs_input_grad[0] else None
            grad_b = grad.T @ a if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def autograd_rows(
    xq: torch.Tensor,
    g: torch.Tensor,
    yq: torch.Tensor,
    yg: torch.Tensor,
    self_cols: torch.Tensor | None,
    hp: HyperParameters,
    excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Fully differentiable per-query ``L_P, L_N, n_pos, n_neg, log S+, log S-``; ``excluded``
    lists further ``(row, col)`` pairs to leave out."""
    sqq = (xq * xq).sum(1)
    sqg = (g * g).sum(1)
    d2 = (sqq.unsqueeze(1) + sqg.unsqueeze(0) - 2.0 * _GramProduct.apply(xq, g)).clamp_min(0.0)
    nonzero = d2 > 0
    # sqrt with a zero gradient at 0 instead of inf (the self pair, duplicates).
    dist = torch.where(nonzero, torch.where(nonzero, d2, torch.ones_like(d2)).sqrt(), 0.0)

    same = yq.unsqueeze(1) == yg.unsqueeze(0)
    keep = torch.ones_like(same)
    if self_cols is not None:
        rows = torch.nonzero(self_cols >= 0).squeeze(1)
        keep[rows, self_cols[rows]] = False
    if excluded is not None:
        keep[excluded] = False
    pos = same & (dist > hp.b) & keep
    neg = ~same & (dist < hp.alpha) & keep

    gap_pos = dist - hp.b
    gap_neg = hp.alpha - dist
    loss_pos, log_s_pos = _masked_weighted_mean(gap_pos, hp.Tp * gap_pos, pos)
    loss_neg, log_s_neg = _masked_weighted_mean(gap_neg, hp.Tn * gap_neg, neg)
    n_pos = pos.sum(1).to(xq.dtype)
    n_neg = neg.sum(1).to(xq.dtype)
    return loss_pos, loss_neg, n_pos, n_neg, log_s_pos, log_s_neg
