"""PMLCrossBatchMemory: pytorch-metric-learning's ``CrossBatchMemory`` with a warm-up, a
checkpointable queue and the pairs of one sample excluded, for the baselines' side of the memory
comparison.

The baselines keep PML's own cross-batch memory (the reference implementation of XBM's pairing:
the batch is enqueued first, then its queries are paired with the whole memory, the current
batch's own copies removed by position), so the comparison with RLL + memory is against the
published pairing, not a rewrite. ``memory_size`` means what it means there and in the XBM paper:
the rows a query is paired with once the memory is full, the current batch included (RLL's memory
follows the same definition, so at equal ``memory_size`` both rank against ``min(memory_size,
rows seen)`` rows at every step). Three things PML leaves out are added here:

* a warm-up of ``memory_start`` iterations, during which the plain loss (with its miner) runs on
  the batch and nothing is enqueued (XBM's ``START_ITERATION``);
* the queue position (``queue_idx``, ``has_been_filled``: plain attributes in PML) travels in
  ``state_dict`` with the memory buffers, so a resumed run continues with the same memory;
* given the samples' dataset indices, the memory keeps them beside its rows and every pair of one
  sample is dropped from the mined tuples (not only a row with itself): another copy in the batch
  (the P x K sampler repeats a small class's images) or an older copy in the memory is never a
  positive, as in RLL's memory.

PML is imported by the caller (the loss factory passes its ``CrossBatchMemory`` class in), so this
module does not depend on it; :func:`drop_copy_pairs` imports PML's pair helper only to expand a
``None`` tuple (all pairs) of a batch that holds copies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["PMLCrossBatchMemory", "drop_copy_pairs"]


def drop_copy_pairs(
    indices_tuple: Any,
    labels: torch.Tensor,
    ids: torch.Tensor,
    ref_labels: torch.Tensor | None = None,
    ref_ids: torch.Tensor | None = None,
) -> Any:
    """A PML indices tuple without the anchor-positive pairs of one sample (same dataset index).

    ``indices_tuple``: a miner's pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)``, or None (all
    pairs); ``ids``/``ref_ids`` the dataset indices of the rows and of the reference rows
    (default: the batch's own). Negatives are never the same sample (it has one label). Returns
    the tuple itself when nothing is dropped (None stays None), so a batch without copies gives
    exactly PML's numbers.
    """
    ref_ids = ids if ref_ids is None else ref_ids
    if indices_tuple is None:
        if ref_labels is None and torch.unique(ids).numel() == ids.numel():
            return None
        from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

        indices_tuple = lmu.get_all_pairs_indices(labels, ref_labels)
    anchors, positives = indices_tuple[0], indices_tuple[1]
    keep = ids[anchors] != ref_ids[positives]
    if bool(keep.all()):
        return indices_tuple
    if len(indices_tuple) == 3:
        return anchors[keep], positives[keep], indices_tuple[2][keep]
    return anchors[keep], positives[keep], indices_tuple[2], indices_tuple[3]


class PMLCrossBatchMemory(nn.Module):
    """``forward(embeddings, labels, indices_tuple=None, indices=None)``: a PML loss over
    batch + memory; with ``indices`` (the samples' dataset indices) the pairs of one sample are
    dropped (see the module docstring), without them PML pairs as it does.

    Args:
        cross_batch_memory: PML's ``CrossBatchMemory`` class.
        loss: the PML loss (e.g. ``ContrastiveLoss``, ``MultiSimilarityLoss``).
        miner: its PML miner, or None.
        embedding_dim: the embedding width (the memory's).
        memory_size: rows of the memory, the current batch included (XBM's and PML's
            meaning); at least the (global) batch size.
        memory_start: iterations before the memory is filled and used.

    ``last_stats``: ``{"memory_fill": valid rows after the call}``. In evaluation mode the plain
    loss runs and the memory is left alone.
    """

    takes_indices = True  # the trainer passes the samples' dataset indices (optional here)

    def __init__(
        self,
        cross_batch_memory: type,
        loss: nn.Module,
        miner: nn.Module | None,
        embedding_dim: int,
        memory_size: int,
        memory_start: int = 0,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("embedding_dim", embedding_dim, 1),
            ("memory_size", memory_size, 1),
            ("memory_start", memory_start, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.xbm = cross_batch_memory(loss, embedding_dim, memory_size=memory_size, miner=miner)
        self.embedding_dim, self.memory_size, self.memory_start = (
            embedding_dim,
            memory_size,
            memory_start,
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # The dataset index of each memory row (-1: unknown), at PML's queue positions.
        self.register_buffer("sample_ids", torch.full((memory_size,), -1, dtype=torch.long))
        self.last_stats: dict[str, float] = {}

    @property
    def filled(self) -> int:
        """Valid memory rows."""
        return self.memory_size if self.xbm.has_been_filled else int(self.xbm.queue_idx)

    @property
    def started(self) -> bool:
        return int(self.step) >= self.memory_start

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: Any = None,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings of shape {tuple(embeddings.shape)} do not fit the memory of width "
                f"{self.embedding_dim}; build the memory with the model's embedding width"
            )
        if self.training and self.started:
            if embeddings.shape[0] > self.memory_size:
                raise ValueError(
                    f"a batch of {embeddings.shape[0]} rows does not fit a memory of "
                    f"{self.memory_size}: set loss.memory_size to at least the global batch"
                )
            if indices is None:
                out = self.xbm(embeddings, labels, indices_tuple)
                self.sample_ids[self.xbm.curr_batch_idx.to(self.sample_ids.device)] = -1
            else:
                out = self._by_index(embeddings, labels, indices_tuple, indices)
        else:
            miner, loss = self.xbm.miner, self.xbm.loss
            if miner is not None and indices_tuple is None:
                indices_tuple = miner(embeddings, labels)
            if indices is not None:
                indices_tuple = drop_copy_pairs(indices_tuple, labels, indices.to(labels.device))
            out = loss(embeddings, labels, indices_tuple)
        if self.training:
            self.step.add_(1)
        self.last_stats = {"memory_fill": float(self.filled)}
        return out

    def _by_index(
        self, embeddings: torch.Tensor, labels: torch.Tensor, tuples: Any, ids: torch.Tensor
    ) -> torch.Tensor:
        """PML's ``CrossBatchMemory.forward`` step by step (enqueue, mine against the memory,
        the loss), with the pairs of one sample dropped by dataset index instead of the current
        batch's positions only (a superset: a row and itself are one sample)."""
        xbm = self.xbm
        device = embeddings.device
        if ids.shape != (embeddings.shape[0],):
            raise ValueError(
                f"indices must hold one dataset index per row ({embeddings.shape[0]}), got shape "
                f"{tuple(ids.shape)}"
            )
        xbm.reset_stats()
        labels = labels.to(device)
        xbm.embedding_memory = xbm.embedding_memory.to(device=device, dtype=embeddings.dtype)
        xbm.label_memory = xbm.label_memory.to(device=device, dtype=labels.dtype)
        self.sample_ids = self.sample_ids.to(device)
        xbm.add_to_memory(embeddings, labels, embeddings.shape[0])
        self.sample_ids[xbm.curr_batch_idx] = ids.to(device=device, dtype=torch.long)
        n = self.memory_size if xbm.has_been_filled else int(xbm.queue_idx)
        mem_emb, mem_labels = xbm.embedding_memory[:n], xbm.label_memory[:n]
        tuples = xbm.create_indices_tuple(embeddings, labels, mem_emb, mem_labels, tuples, False)
        ref_ids = self.sample_ids[:n]
        tuples = drop_copy_pairs(tuples, labels, ids.to(device), mem_labels, ref_ids)
        return xbm.loss(embeddings, labels, tuples, mem_emb, mem_labels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A checkpoint from before the memory kept dataset indices: its rows' samples unknown.
        state_dict.setdefault(prefix + "sample_ids", torch.full_like(self.sample_ids, -1))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict[str, Any]:
        return {"queue_idx": int(self.xbm.queue_idx), "has_been_filled": self.xbm.has_been_filled}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.xbm.queue_idx = int(state["queue_idx"])
        self.xbm.has_been_filled = bool(state["has_been_filled"])

    def extra_repr(self) -> str:
        return f"memory_size={self.memory_size}, memory_start={self.memory_start}"
