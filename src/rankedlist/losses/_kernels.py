"""Computational kernels of the Ranked List Loss (private).

Two implementations of the same loss, the Ranked List Loss of Wang et al. (CVPR 2019, extended in
TPAMI 2021); the options and numerics are described in the package README and
``docs/ARCHITECTURE.md``:

* :class:`PaperRankedList`, a ``torch.autograd.Function`` for ``gradient="paper"``. The weights are
  constants and the gallery is detached, so the gradient of query i depends only on its own ranked
  list and has the closed form ``sum_j a_ij (f_i - f_j)``. The forward pass walks over chunks of
  queries, computes each chunk's loss *and* its gradient with two matrix products and a few
  in-place passes over preallocated ``c x M`` buffers, and keeps only the ``N x D`` gradient for
  the backward pass. No ``N x M`` matrix is ever stored, which is what makes B = 16384 fit in a
  few hundred MB and runs close to the cost of the bare distance matrix.
* :func:`autograd_rows`, a plain differentiable implementation for ``gradient="autograd"`` where
  every quantity (weights, gallery) is live; it passes ``torch.autograd.gradcheck``.

Both return per-query ``L_P``-, ``L_N``- based losses plus what the reductions and the statistics
need: active counts and ``log S+`` / ``log S-`` (the raw weight sums, kept in log space so that the
"official" reduction never overflows).
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "HyperParameters",
    "PaperRankedList",
    "auto_chunk_rows",
    "autocast_disabled",
    "autograd_rows",
    "official_weights",
]

# Elements of one c x M work buffer. On CPU about 16 MB per float32 buffer keeps the six buffers of
# a chunk close to the L3 cache; the first-touch cost of freshly allocated large tensors (page
# faults) is avoided by allocating them once per call.
_CPU_CHUNK_ELEMENTS = 4 * 1024 * 1024
_CUDA_CHUNK_ELEMENTS = 16 * 1024 * 1024
# Matrix products with fewer rows than this lose much of their speed on CPU, so chunks grow up to
# it as long as a buffer stays below _MAX_CHUNK_ELEMENTS.
_MIN_CHUNK_ROWS = 256
_MAX_CHUNK_ELEMENTS = 16 * 1024 * 1024
# Work buffers up to this many bytes are kept between calls on CPU: the CPU allocator hands large
# blocks back to the OS, and touching fresh pages again costs as much as several full passes over
# the buffers (CUDA has its own caching allocator).
_WORKSPACE_MAX_BYTES = 256 * 1024 * 1024
_N_BUFFERS = 7
_workspace = threading.local()


@dataclass(frozen=True)
class HyperParameters:
    """The loss' hyper-parameters, already validated (alpha resolved)."""

    margin: float
    alpha: float
    Tn: float
    Tp: float
    lam: float

    @property
    def b(self) -> float:
        """The positive boundary ``alpha - margin``."""
        return self.alpha - self.margin


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns off an enclosing autocast region for ``device``'s type.

    The loss needs float32 distances at least: autocast would run its matrix products in
    float16/bfloat16, moving pairs across the boundaries alpha and alpha - m.
    """
    is_available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    available = is_available(device.type) if is_available else device.type in ("cpu", "cuda")
    if available:
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _exp_limit(dtype: torch.dtype) -> float:
    """Largest exponent for which ``M * exp(x)`` stays far from overflow without a row shift."""
    return 600.0 if dtype == torch.float64 else 60.0


def auto_chunk_rows(n_queries: int, n_ref: int, device: torch.device) -> int:
    """Query rows per chunk so that one ``rows x n_ref`` work buffer has a cache-friendly size."""
    target = _CUDA_CHUNK_ELEMENTS if device.type == "cuda" else _CPU_CHUNK_ELEMENTS
    ref = max(n_ref, 1)
    rows = target // ref
    if rows < _MIN_CHUNK_ROWS:
        rows = min(_MIN_CHUNK_ROWS, max(1, _MAX_CHUNK_ELEMENTS // ref))
    return max(1, min(rows, n_queries))


def _work_buffers(rows: int, cols: int, dtype: torch.dtype, device: torch.device):
    """``_N_BUFFERS`` contiguous ``rows x cols`` buffers, reused between calls on CPU."""
    numel = _N_BUFFERS * rows * cols
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or nbytes > _WORKSPACE_MAX_BYTES:
        flat = torch.empty(numel, dtype=dtype, device=device)
    else:
        cache = getattr(_workspace, "buffers", None)
        if cache is None:
            cache = _workspace.buffers = {}
        flat = cache.get(dtype)
        if flat is None or flat.numel() < numel:
            cache.pop(dtype, None)  # release the smaller one first
            flat = cache[dtype] = torch.empty(numel, dtype=dtype)
    return list(flat[:numel].view(_N_BUFFERS, rows, cols).unbind(0))


def release_workspace() -> None:
    """Free the work buffers kept between calls (this thread's): what a long-lived process that
    has finished with the loss, or a test that measures memory, calls."""
    _workspace.__dict__.pop("buffers", None)


def _rowdot(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(1)`` using a preallocated scratch buffer for the product."""
    return torch.mul(a, b, out=scratch).sum(1)


class PaperRankedList(torch.autograd.Function):
    """Chunked forward pass that also produces the closed-form query gradient (paper semantics).

    Inputs: raw queries ``x`` (N x D, compute dtype), the detached reference set ``g`` (M x D,
    already normalised if requested) or ``None`` to rank the queries against themselves, labels
    ``yq``/``yg`` as class ids in a floating dtype (a float compare is the fastest label test),
    ``self_cols`` (N, long, ``-1`` = no self pair; ``None`` = the diagonal when ``g`` is None,
    else no exclusion), the hyper-parameters, the per-query combination
    ``loss_i = kP L_P + kN L_N``, the chunk size in rows and whether to L2-normalise ``x``.
    Outputs (all length N): ``loss``, ``n_pos``, ``n_neg``, ``log_s_pos``, ``log_s_neg``; only
    ``loss`` is differentiable (with respect to ``x``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        g: torch.Tensor | None,
        yq: torch.Tensor,
        yg: torch.Tensor,
        self_cols: torch.Tensor | None,
        hp: HyperParameters,
        kP: float,
        kN: float,
        chunk_rows: int,
        normalize: bool,
    ):
        n, dim = x.shape
        dtype, device = x.dtype, x.device
        need_grad = bool(ctx.needs_input_grad[0])

        # The normalisation is done here rather than by autograd: its backward is folded into
        # the stored per-query gradient (a scalar grad_output per query commutes with it).
        if normalize:
            norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
            f = x / norms
        else:
            f = x
        sqq = (f * f).sum(1)
        if g is None:
            g, sqg = f, sqq
        else:
            sqg = (g * g).sum(1)
        m = g.shape[0]

        loss = torch.empty(n, dtype=dtype, device=device)
        n_pos = torch.empty(n, dtype=dtype, device=device)
        n_neg = torch.empty(n, dtype=dtype, device=device)
        log_s_pos = torch.empty(n, dtype=dtype, device=device)
        log_s_neg = torch.empty(n, dtype=dtype, device=device)
        grad = torch.empty(n, dim, dtype=dtype, device=device) if need_grad else None

        limit = _exp_limit(dtype)
        # An empty reference set (a memory bank that has not filled yet) has nothing to shift by
        # (amax over zero columns raises): every set is empty and the loss and gradient are 0.
        shift_neg = hp.Tn * hp.alpha > limit and m > 0
        shift_pos = False
        if hp.Tp > 0 and m > 0:
            # Triangle inequality bounds every distance, hence every positive exponent.
            d_max = math.sqrt(float(sqq.max())) + math.sqrt(float(sqg.max()))
            shift_pos = hp.Tp * (d_max - hp.b) > limit

        c_max = max(1, min(chunk_rows, n))
        diagonal = self_cols is None and g is f
        all_self = self_cols is not None and bool((self_cols >= 0).all())
        bufs = _work_buffers(c_max, m, dtype, device)
        # z = offset - scale * d: Tn (alpha - d) for Tn > 0, alpha - d for Tn = 0.
        offset = hp.Tn * hp.alpha if hp.Tn > 0 else hp.alpha
        consts = {"z_offset": torch.tensor(offset, dtype=dtype, device=device)}
        for start in range(0, n, c_max):
            stop = min(start + c_max, n)
            sl = slice(start, stop)
            c = stop - start
            chunk_bufs = [buf[:c] for buf in bufs]
            if diagonal:
                excluded = (start, None)
            elif self_cols is None:
                excluded = None
            else:
                cols = self_cols[sl]
                rows = None if all_self else torch.nonzero(cols >= 0).squeeze(1)
                excluded = (rows, cols if rows is None else cols[rows])
            out = _paper_chunk(
                f[sl], sqq[sl], g, sqg, yq[sl], yg, excluded,
                hp, kP, kN, shift_neg, shift_pos, need_grad, chunk_bufs, consts,
            )  # fmt: skip
            loss[sl], n_pos[sl], n_neg[sl], log_s_pos[sl], log_s_neg[sl] = out[:5]
            if need_grad:
                grad[sl] = out[5]
        del bufs

        if need_grad:
            if normalize:
                # Back through f = x / |x|: (I - f f^T) / |x|.
                grad = (grad - f * (f * grad).sum(1, keepdim=True)) / norms
            ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(n_pos, n_neg, log_s_pos, log_s_neg)
        return loss, n_pos, n_neg, log_s_pos, log_s_neg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, *unused):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad_loss.unsqueeze(1) * grad,) + (None,) * 9


def _paper_chunk(
    xc: torch.Tensor,
    sqc: torch.Tensor,
    g: torch.Tensor,
    sqg: torch.Tensor,
    yc: torch.Tensor,
    yg: torch.Tensor,
    excluded: tuple | None,
    hp: HyperParameters,
    kP: float,
    kN: float,
    shift_neg: bool,
    shift_pos: bool,
    need_grad: bool,
    bufs: list[torch.Tensor],
    consts: dict[str, torch.Tensor],
):
    """Loss, statistics and closed-form gradient of one chunk of queries (all in-place work)."""
    dist, notsame, neg, pos, work, coef, scratch = bufs
    alpha, b = hp.alpha, hp.b

    # Distances from one product; clamp the rounding error of the expansion before the sqrt.
    torch.addmm(sqg.unsqueeze(0), xc, g.T, alpha=-2.0, out=dist)
    dist.add_(sqc.unsqueeze(1)).clamp_(min=0.0).sqrt_()

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
) -> tuple[torch.Tensor, ...]:
    """Fully differentiable per-query ``L_P, L_N, n_pos, n_neg, log S+, log S-``."""
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
    pos = same & (dist > hp.b) & keep
    neg = ~same & (dist < hp.alpha) & keep

    gap_pos = dist - hp.b
    gap_neg = hp.alpha - dist
    loss_pos, log_s_pos = _masked_weighted_mean(gap_pos, hp.Tp * gap_pos, pos)
    loss_neg, log_s_neg = _masked_weighted_mean(gap_neg, hp.Tn * gap_neg, neg)
    n_pos = pos.sum(1).to(xq.dtype)
    n_neg = neg.sum(1).to(xq.dtype)
    return loss_pos, loss_neg, n_pos, n_neg, log_s_pos, log_s_neg


def official_weights(log_s_pos: torch.Tensor, log_s_neg: torch.Tensor) -> torch.Tensor:
    """``q_i = (S+_i + S-_i) / sum_k (S+_k + S-_k)`` computed in log space (0 for idle queries)."""
    top = torch.maximum(log_s_pos, log_s_neg).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    s = torch.exp(log_s_pos - top) + torch.exp(log_s_neg - top)
    has = s > 0
    if not bool(has.any()):
        return torch.zeros_like(s)
    log_s = torch.where(
        has, top + torch.log(torch.where(has, s, torch.ones_like(s))), torch.full_like(s, -math.inf)
    )
    return torch.softmax(log_s, dim=0)
