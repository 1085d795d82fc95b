"""PMLCrossBatchMemory: pytorch-metric-learning's ``CrossBatchMemory`` with a warm-up and a
checkpointable queue, for the baselines' side of the memory comparison.

The baselines keep PML's own cross-batch memory (the reference implementation of XBM's pairing:
the batch is enqueued first, then its queries are paired with the whole memory, the current
batch's own copies removed by position), so the comparison with RLL + memory is against the
published pairing, not a rewrite. Two things PML leaves out are added here:

* a warm-up of ``memory_start`` iterations, during which the plain loss (with its miner) runs on
  the batch and nothing is enqueued (XBM's ``START_ITERATION``);
* the queue position (``queue_idx``, ``has_been_filled``: plain attributes in PML) travels in
  ``state_dict`` with the memory buffers, so a resumed run continues with the same memory.

PML is imported by the caller (the loss factory passes its ``CrossBatchMemory`` class in), so this
module does not depend on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["PMLCrossBatchMemory"]


class PMLCrossBatchMemory(nn.Module):
    """``forward(embeddings, labels, indices_tuple=None)``: a PML loss over batch + memory.

    Args:
        cross_batch_memory: PML's ``CrossBatchMemory`` class.
        loss: the PML loss (e.g. ``ContrastiveLoss``, ``MultiSimilarityLoss``).
        miner: its PML miner, or None.
        embedding_dim: the embedding width (the memory's).
        memory_size: rows of the memory; at least the (global) batch size.
        memory_start: iterations before the memory is filled and used.

    ``last_stats``: ``{"memory_fill": valid rows after the call}``. In evaluation mode the plain
    loss runs and the memory is left alone.
    """

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
        self.last_stats: dict[str, float] = {}

    @property
    def filled(self) -> int:
        """Valid memory rows."""
        return self.memory_size if self.xbm.has_been_filled else int(self.xbm.queue_idx)

    @property
    def started(self) -> bool:
        return int(self.step) >= self.memory_start

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: Any = None
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
            out = self.xbm(embeddings, labels, indices_tuple)
        else:
            miner, loss = self.xbm.miner, self.xbm.loss
            if miner is not None and indices_tuple is None:
                indices_tuple = miner(embeddings, labels)
            out = loss(embeddings, labels, indices_tuple)
        if self.training:
            self.step.add_(1)
        self.last_stats = {"memory_fill": float(self.filled)}
        return out

    def get_extra_state(self) -> dict[str, Any]:
        return {"queue_idx": int(self.xbm.queue_idx), "has_been_filled": self.xbm.has_been_filled}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.xbm.queue_idx = int(state["queue_idx"])
        self.xbm.has_been_filled = bool(state["has_been_filled"])

    def extra_repr(self) -> str:
        return f"memory_size={self.memory_size}, memory_start={self.memory_start}"
