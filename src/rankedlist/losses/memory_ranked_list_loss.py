"""The Ranked List Loss with a cross-batch memory: each query ranked against batch + memory.

The paper's loss is set-based: a query's positives and negatives are mined and weighted over its
gallery. With a memory bank (XBM, Wang et al., CVPR 2020) the gallery is the union of the current
batch and the newest embeddings of earlier batches, as **one** ranked list: the non-trivial sets
P*_i and N*_i, the weights and their normalising sums all run over the union.

* Memory size, as in XBM and pytorch-metric-learning's ``CrossBatchMemory``: a memory of ``M``
  rows holds the current batch too, so a batch of ``B`` rows is ranked against itself and the
  newest ``M - B`` rows of earlier batches: ``min(M, rows seen)`` gallery rows in all, the same
  number the baselines' PML memory gives at every step. ``M`` must be at least ``B``.
* The query's own batch row is excluded by index, and so is every other row that holds a copy of
  the same sample (same dataset index): another copy in the batch (the P x K sampler repeats the
  images of small classes) or an older one in the memory. An image is never its own positive.
* ``gradient="paper"``: exact, since the paper already detaches the gallery; only the queries
  receive gradient. ``gradient="autograd"``: the batch rows are live (as queries and as gallery)
  and the memory rows are constants: they take part in the distances, the masks and the weights,
  but receive no gradient (they are detached embeddings of earlier iterations).
* The memory keeps the rows as the loss uses them (L2-normalised when the loss normalises), so
  they are not normalised again at every use; most of them are trivial for any given query, so
  with ``gradient="paper"`` each chunk of queries is ranked against its candidate rows only
  (the same result, at about the cost of the queries x gallery product).
* The batch is enqueued after the loss is computed, so a query never meets its current self in
  the memory; under DDP the enqueued batch is the gathered global batch, in global order, so the
  memory is the same on every process.

Example::

    loss_fn = MemoryRankedListLoss(RankedListLoss(), MemoryBank(size=4096, dim=128, start=100))
    # a batch of 256 rows is ranked against itself and the newest 3,840 rows of earlier batches
    loss = loss_fn(embeddings, labels, indices)   # indices: the samples' dataset indices
    loss_fn.last_stats  # active_pos / active_neg over batch + memory, memory_fill
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankedlist.losses._excluded_pairs import copy_pairs
from rankedlist.losses._inputs import check_embeddings, check_indices
from rankedlist.losses.memory_bank import MemoryBank
from rankedlist.losses.ranked_list_loss import RankedListLoss

__all__ = ["MemoryRankedListLoss"]


def _gallery_rows(batch: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Detached rows in the loss's compute precision (float32 at least), normalised if asked."""
    rows = batch.detach()
    if rows.dtype not in (torch.float32, torch.float64):
        rows = rows.float()
    return F.normalize(rows, dim=1) if normalize else rows


class MemoryRankedListLoss(nn.Module):
    """:class:`RankedListLoss` over the union of the batch and a :class:`MemoryBank`.

    Args:
        loss: the Ranked List Loss (its options: margin, alpha, Tn, Tp, lam, gradient, ...).
        memory: the bank; its ``size`` counts the current batch (see the module docstring), its
            ``start`` is the warm-up in iterations.

    ``forward(embeddings, labels, indices, ref_emb=None, ref_labels=None, self_index=None,
    ref_indices=None)``: ``indices`` are the dataset indices of the queries. By default the batch
    itself is the batch part of the gallery; a distributed caller passes the gathered global
    batch as ``ref_emb``/``ref_labels``/``ref_indices`` with ``self_index`` marking each query's
    own row (as for :class:`RankedListLoss`). In training mode each call is one iteration: after
    the loss is computed, the batch part of the gallery is enqueued (once the warm-up is over).
    In evaluation mode the memory is neither used nor changed.

    ``last_stats``: RLL's statistics over the union (``active_pos``, ``active_neg``,
    ``nonzero_frac``) and ``memory_fill``, the memory's valid rows after the call.
    """

    takes_indices = True  # the trainer passes the samples' dataset indices to such losses
    needs_indices = True  # ...and this one cannot do without them

    def __init__(self, loss: RankedListLoss, memory: MemoryBank) -> None:
        super().__init__()
        if not isinstance(loss, RankedListLoss):
            raise TypeError(f"loss must be a RankedListLoss, got {type(loss).__name__}")
        if not isinstance(memory, MemoryBank):
            raise TypeError(f"memory must be a MemoryBank, got {type(memory).__name__}")
        self.loss = loss
        self.memory = memory
        self.last_stats: dict[str, float] = {}
        self._scratch: torch.Tensor | None = None  # the paper gallery's storage, reused

    def _gallery(self, part: torch.Tensor, memory_parts: list[torch.Tensor]) -> torch.Tensor:
        """``cat([part, *memory_parts])``. A detached gallery is written into storage kept
        between calls: a fresh M x D block at every step costs as much again in page faults."""
        memory_parts = [rows.to(device=part.device, dtype=part.dtype) for rows in memory_parts]
        if part.requires_grad:
            return torch.cat([part, *memory_parts])
        n = part.shape[0] + sum(rows.shape[0] for rows in memory_parts)
        buf = self._scratch
        if buf is None or buf.shape[0] < n or buf.dtype != part.dtype or buf.device != part.device:
            rows = max(n, self.memory.size)
            buf = self._scratch = part.new_empty(rows, part.shape[1])
        return torch.cat([part, *memory_parts], out=buf[:n])

    # The options a caller (the distributed wrapper) reads off a loss.
    @property
    def gradient(self) -> str:
        return self.loss.gradient

    @property
    def reduction(self) -> str:
        return self.loss.reduction

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        self_index: torch.Tensor | None = None,
        ref_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of the queries ranked against the batch part of the gallery + the memory."""
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
            raise ValueError(
                f"embeddings must be 2-D (N, D), got {getattr(embeddings, 'shape', embeddings)}"
            )
        self.memory.check_width(embeddings)
        device = embeddings.device
        if indices is None:
            raise ValueError(
                "a loss with a memory bank needs the dataset index of every sample "
                "(forward(embeddings, labels, indices)) to exclude older copies of a sample"
            )
        indices = check_indices("indices", indices, embeddings.shape[0], device)
        if ref_emb is None:
            if ref_labels is not None or ref_indices is not None or self_index is not None:
                raise ValueError("ref_labels/ref_indices/self_index were given without ref_emb")
            batch, batch_labels, batch_ids = embeddings, labels, indices
        else:
            self.memory.check_width(ref_emb)
            if ref_labels is None:
                raise ValueError("ref_emb was given without ref_labels; pass both")
            batch, batch_labels = ref_emb, ref_labels
            batch_ids = check_indices("ref_indices", ref_indices, ref_emb.shape[0], device)

        if ref_emb is not None and self.loss.gradient == "paper":
            check_embeddings("ref_emb", batch, self.loss.normalize)  # the gathered rows
        started = self.training and self.memory.started
        earlier = self.memory.size - batch.shape[0]  # rows of earlier batches in the gallery
        if started and earlier < 0:
            raise ValueError(
                f"a batch of {batch.shape[0]} rows does not fit a memory of {self.memory.size} "
                "(it holds the current batch too): set loss.memory_size to at least the global "
                "batch"
            )
        # The batch as gallery rows, the way the memory keeps them: detached and, when the loss
        # normalises, L2-normalised once here (not at every later use of the memory).
        rows = _gallery_rows(batch, self.loss.normalize)
        parts = self.memory.recent(earlier) if started else []
        self_cols = self_index
        if self_index is None and ref_emb is None:
            self_cols = torch.arange(embeddings.shape[0], device=device)
        if not parts:
            # Nothing remembered yet: the plain loss (same code path, same numbers), with the
            # batch's own copies of a sample excluded.
            excluded = copy_pairs(indices, batch_ids, self_cols)
            loss, stats = self.loss.loss_and_stats(
                embeddings, labels, ref_emb, ref_labels, self_index, excluded=excluded
            )
        else:
            # "paper": the gallery is detached anyway; "autograd": the batch rows stay live.
            part = rows if self.loss.gradient == "paper" else batch
            gallery = self._gallery(part, [emb for emb, _, _ in parts])
            gallery_labels = torch.cat(
                [batch_labels.to(device), *(lab.to(device) for _, lab, _ in parts)]
            )
            # Every copy of each query's sample other than its own row: in the batch (repeated
            # by the sampler) and in the memory (older copies).
            gallery_ids = torch.cat([batch_ids, *(ids.to(device) for _, _, ids in parts)])
            excluded = copy_pairs(indices, gallery_ids, self_cols)
            loss, stats = self.loss.loss_and_stats(
                embeddings, labels, gallery, gallery_labels, self_cols, excluded=excluded,
                memory_gallery=True,
            )  # fmt: skip
        if self.training:
            self.memory.update(rows, batch_labels.to(device), batch_ids)
        self.last_stats = {**stats, "memory_fill": float(self.memory.filled)}
        return loss

    def extra_repr(self) -> str:
        return "batch + memory as one ranked list"
