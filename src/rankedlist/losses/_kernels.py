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
  few hundred MB and runs close to the cost of the bare distance matrix. One chunk's work is in
  :mod:`~rankedlist.losses._paper_chunk`, its reusable buffers in
  :mod:`~rankedlist.losses._workspace`.
* :func:`~rankedlist.losses._autograd_rows.autograd_rows` (its own module), a plain
  differentiable implementation for ``gradient="autograd"`` where every quantity (weights,
  gallery) is live; it passes ``torch.autograd.gradcheck``.

Both return per-query ``L_P``-, ``L_N``- based losses plus what the reductions and the statistics
need: active counts and ``log S+`` / ``log S-`` (the raw weight sums, kept in log space so that the
"official" reduction never overflows).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from rankedlist.losses._excluded_pairs import pair_bounds, pairs_between
from rankedlist.losses._paper_chunk import compact_chunk, paper_chunk
from rankedlist.losses._workspace import work_buffers, workspace_rows

__all__ = [
    "HyperParameters",
    "PaperRankedList",
    "auto_chunk_rows",
    "autocast_disabled",
    "official_weights",
]

# Elements of one c x M work buffer. On CPU about 16 MB per float32 buffer keeps the buffers of
# a chunk close to the L3 cache; the first-touch cost of freshly allocated large tensors (page
# faults) is avoided by allocating them once per call.
_CPU_CHUNK_ELEMENTS = 4 * 1024 * 1024
_CUDA_CHUNK_ELEMENTS = 16 * 1024 * 1024
# Matrix products with fewer rows than this lose much of their speed on CPU, so chunks grow up to
# it as long as a buffer stays below _MAX_CHUNK_ELEMENTS; against a memory gallery on CPU, as far
# as the workspace kept between calls holds the chunk's buffers (_workspace.workspace_rows).
_MIN_CHUNK_ROWS = 256
_MAX_CHUNK_ELEMENTS = 16 * 1024 * 1024


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


def auto_chunk_rows(
    n_queries: int, n_ref: int, device: torch.device, dtype: torch.dtype | None = None
) -> int:
    """Query rows per chunk so that one ``rows x n_ref`` work buffer has a cache-friendly size.

    With ``dtype`` (a large memory gallery) the rows are also capped on CPU so that the work
    buffers stay within the workspace kept between calls: fresh pages for a few hundred MB at
    every call would cost more than the passes over them.
    """
    target = _CUDA_CHUNK_ELEMENTS if device.type == "cuda" else _CPU_CHUNK_ELEMENTS
    ref = max(n_ref, 1)
    rows = target // ref
    if rows < _MIN_CHUNK_ROWS:
        rows = min(_MIN_CHUNK_ROWS, max(1, _MAX_CHUNK_ELEMENTS // ref))
    if dtype is not None and device.type == "cpu":
        # The products lose speed below _MIN_CHUNK_ROWS rows: as many as the workspace holds.
        rows = min(max(rows, _MIN_CHUNK_ROWS), workspace_rows(ref, dtype))
    return max(1, min(rows, n_queries))


class PaperRankedList(torch.autograd.Function):
    """Chunked forward pass that also produces the closed-form query gradient (paper semantics).

    Inputs: raw queries ``x`` (N x D, compute dtype), the detached reference set ``g`` (M x D,
    already normalised if requested) or ``None`` to rank the queries against themselves, labels
    ``yq``/``yg`` as class ids in a floating dtype (a float compare is the fastest label test),
    ``self_cols`` (N, long, ``-1`` = no self pair; ``None`` = the diagonal when ``g`` is None,
    else no exclusion), ``excluded`` (further ``(query rows, reference cols)`` pairs to leave
    out, rows sorted, or ``None``: a memory bank's older copies of the queries), the
    hyper-parameters, the per-query combination ``loss_i = kP L_P + kN L_N``, the chunk size in
    rows, whether to L2-normalise ``x`` and whether to compact each chunk's reference columns
    (``compact``: for a large, mostly trivial reference set such as a memory bank; see
    :func:`~rankedlist.losses._paper_chunk.compact_chunk`).
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
        excluded: tuple[torch.Tensor, torch.Tensor] | None,
        hp: HyperParameters,
        kP: float,
        kN: float,
        chunk_rows: int,
        normalize: bool,
        compact: bool = False,
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
        elif compact:
            sqg = torch.linalg.vector_norm(g, dim=1).square_()  # no M x D temporary
            if normalize and g.shape[0] and float((sqg - 1.0).abs().amax()) > 1e-3:
                raise ValueError(
                    "the memory's rows must be L2-normalised, as the loss keeps them: fill it "
                    "through the loss, or enqueue F.normalize(rows) when the loss normalises"
                )
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
        c_max = -(-n // -(-n // c_max))  # near-equal chunks: no much shorter, slower last one
        diagonal = self_cols is None and g is f
        all_self = self_cols is not None and bool((self_cols >= 0).all())
        compact = compact and not diagonal and m > 0
        bufs = work_buffers(c_max, m, dtype, device)
        # z = offset - scale * d: Tn (alpha - d) for Tn > 0, alpha - d for Tn = 0.
        offset = hp.Tn * hp.alpha if hp.Tn > 0 else hp.alpha
        consts = {"z_offset": torch.tensor(offset, dtype=dtype, device=device)}
        starts = list(range(0, n, c_max))
        bounds = pair_bounds(excluded, starts + [n])
        for chunk, start in enumerate(starts):
            stop = min(start + c_max, n)
            sl = slice(start, stop)
            c = stop - start
            chunk_bufs = [buf[:c] for buf in bufs]
            if diagonal:
                self_pairs = (start, None)
            elif self_cols is None:
                self_pairs = None
            else:
                cols = self_cols[sl]
                rows = None if all_self else torch.nonzero(cols >= 0).squeeze(1)
                self_pairs = (rows, cols if rows is None else cols[rows])
            extra = pairs_between(excluded, bounds, chunk, start)
            args = (
                f[sl], sqq[sl], g, sqg, yq[sl], yg, self_pairs, extra,
                hp, kP, kN, shift_neg, shift_pos, need_grad, chunk_bufs, consts,
            )  # fmt: skip
            if compact:
                out, dense = compact_chunk(*args)
                compact = not dense  # a crowded chunk: the next ones will be crowded too
            else:
                out = paper_chunk(*args)
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
        return (grad_loss.unsqueeze(1) * grad,) + (None,) * 11


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
