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

import torch
from torch.autograd.function import once_differentiable

from rankedlist.losses._excluded_pairs import pair_bounds, pairs_between
from rankedlist.losses._inputs import HyperParameters, RankedLists
from rankedlist.losses._paper_chunk import (
    ChunkInputs,
    ChunkSettings,
    SelfPairs,
    compact_chunk,
    paper_chunk,
)
from rankedlist.losses._workspace import work_buffers, workspace_rows

__all__ = [
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

    ``apply(x, lists, hp)``: the raw queries ``x`` (N x D, compute dtype), what they are ranked
    against (:class:`~rankedlist.losses._inputs.RankedLists`: the detached reference set, already
    normalised if requested, or ``None`` for the queries themselves, the labels as floats of the
    compute dtype, the self and excluded pairs; ``memory_gallery``: compact each chunk's reference
    columns, see :func:`~rankedlist.losses._paper_chunk.compact_chunk`) and the hyper-parameters
    (``normalize``: L2-normalise ``x``; ``chunk_size``: query rows per chunk, ``None`` for
    :func:`auto_chunk_rows`; the per-query loss is ``kP L_P + kN L_N``).
    Outputs (all length N): ``loss``, ``n_pos``, ``n_neg``, ``log_s_pos``, ``log_s_neg``; only
    ``loss`` is differentiable (with respect to ``x``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: torch.Tensor, lists: RankedLists, hp: HyperParameters
    ) -> tuple[torch.Tensor, ...]:
        need_grad = bool(ctx.needs_input_grad[0])
        # The normalisation is done here rather than by autograd: its backward is folded into
        # the stored per-query gradient (a scalar grad_output per query commutes with it).
        if hp.normalize:
            norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
            f = x / norms
        else:
            f = x
        sqq = (f * f).sum(1)
        g, sqg = _reference_sq_norms(f, sqq, lists, hp.normalize)
        outputs = _paper_chunks(f, sqq, g, sqg, lists, hp, need_grad)
        loss, n_pos, n_neg, log_s_pos, log_s_neg = outputs[:5]
        if need_grad:
            grad = outputs[5]
            if hp.normalize:
                # Back through f = x / |x|: (I - f f^T) / |x|.
                grad = (grad - f * (f * grad).sum(1, keepdim=True)) / norms
            ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(n_pos, n_neg, log_s_pos, log_s_neg)
        return loss, n_pos, n_neg, log_s_pos, log_s_neg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, *unused):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        # One gradient per input of forward: the queries' and none for the records.
        return (grad_loss.unsqueeze(1) * grad,) + (None,) * (len(ctx.needs_input_grad) - 1)


def _reference_sq_norms(
    f: torch.Tensor, sqq: torch.Tensor, lists: RankedLists, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference set (the queries ``f`` themselves without one) and its squared row norms;
    a memory gallery's rows are checked to be normalised, as the loss keeps them."""
    g = lists.reference
    if g is None:
        return f, sqq
    if not lists.memory_gallery:
        return g, (g * g).sum(1)
    sqg = torch.linalg.vector_norm(g, dim=1).square_()  # no M x D temporary
    if normalize and g.shape[0] and float((sqg - 1.0).abs().amax()) > 1e-3:
        raise ValueError(
            "the memory's rows must be L2-normalised, as the loss keeps them: fill it "
            "through the loss, or enqueue F.normalize(rows) when the loss normalises"
        )
    return g, sqg


def _paper_chunks(
    f: torch.Tensor,
    sqq: torch.Tensor,
    g: torch.Tensor,
    sqg: torch.Tensor,
    lists: RankedLists,
    hp: HyperParameters,
    need_grad: bool,
) -> list[torch.Tensor]:
    """Per query ``loss, n_pos, n_neg, log S+, log S-`` and, with ``need_grad``, the N x D
    gradient with respect to ``f``: the queries ``f`` ranked against ``g``, chunk by chunk."""
    (n, dim), m = f.shape, g.shape[0]
    dtype, device = f.dtype, f.device
    outputs = [torch.empty(n, dtype=dtype, device=device) for _ in range(5)]
    if need_grad:
        outputs.append(torch.empty(n, dim, dtype=dtype, device=device))
    settings = _chunk_settings(hp, sqq, sqg, m, need_grad)

    rows = hp.chunk_size
    if rows is None:
        rows = auto_chunk_rows(n, m, device, dtype if lists.memory_gallery else None)
    c_max = max(1, min(rows, n))
    c_max = -(-n // -(-n // c_max))  # near-equal chunks: no much shorter, slower last one
    self_cols = lists.self_cols
    diagonal = self_cols is None and g is f
    all_self = self_cols is not None and bool((self_cols >= 0).all())
    compact = lists.memory_gallery and not diagonal and m > 0
    bufs = work_buffers(c_max, m, dtype, device)
    starts = list(range(0, n, c_max))
    bounds = pair_bounds(lists.excluded, starts + [n])
    for index, start in enumerate(starts):
        stop = min(start + c_max, n)
        chunk = ChunkInputs(
            queries=f[start:stop],
            query_sq_norms=sqq[start:stop],
            query_labels=lists.query_labels[start:stop],
            reference=g,
            reference_sq_norms=sqg,
            reference_labels=lists.reference_labels,
            self_pairs=_self_pairs(self_cols, diagonal, all_self, start, stop),
            extra_pairs=pairs_between(lists.excluded, bounds, index, start),
        )
        chunk_bufs = [buf[: stop - start] for buf in bufs]
        if compact:
            out, dense = compact_chunk(chunk, hp, settings, chunk_bufs)
            compact = not dense  # a crowded chunk: the next ones will be crowded too
        else:
            out = paper_chunk(chunk, hp, settings, chunk_bufs)
        for target, value in zip(outputs, out, strict=True):
            target[start:stop] = value
    return outputs


def _chunk_settings(
    hp: HyperParameters, sqq: torch.Tensor, sqg: torch.Tensor, m: int, need_grad: bool
) -> ChunkSettings:
    """Whether the weights need a row shift, and the constant of their exponents."""
    dtype, device = sqq.dtype, sqq.device
    limit = _exp_limit(dtype)
    # An empty reference set (a memory bank that has not filled yet) has nothing to shift by
    # (amax over zero columns raises): every set is empty and the loss and gradient are 0.
    shift_neg = hp.Tn * hp.alpha > limit and m > 0
    shift_pos = False
    if hp.Tp > 0 and m > 0:
        # Triangle inequality bounds every distance, hence every positive exponent.
        d_max = math.sqrt(float(sqq.max())) + math.sqrt(float(sqg.max()))
        shift_pos = hp.Tp * (d_max - hp.b) > limit
    # z = offset - scale * d: Tn (alpha - d) for Tn > 0, alpha - d for Tn = 0.
    offset = hp.Tn * hp.alpha if hp.Tn > 0 else hp.alpha
    z_offset = torch.tensor(offset, dtype=dtype, device=device)
    return ChunkSettings(
        shift_neg=shift_neg, shift_pos=shift_pos, need_grad=need_grad, z_offset=z_offset
    )


def _self_pairs(
    self_cols: torch.Tensor | None, diagonal: bool, all_self: bool, start: int, stop: int
) -> SelfPairs | None:
    """The self pairs of the chunk of query rows ``[start, stop)`` (see ``SelfPairs``)."""
    if diagonal:
        return (start, None)
    if self_cols is None:
        return None
    cols = self_cols[start:stop]
    rows = None if all_self else torch.nonzero(cols >= 0).squeeze(1)
    return (rows, cols if rows is None else cols[rows])


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
