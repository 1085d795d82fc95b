"""MemoryBank: a ring buffer of past embeddings for cross-batch ranking (XBM, Wang et al. 2020).

The bank keeps the last ``size`` embeddings it was given (detached), their class labels and the
dataset index of each sample. ``size`` is XBM's (and pytorch-metric-learning's) memory size: the
rows a query is ranked against once the memory is full, the current batch included, so a loss
ranks a batch of B rows against itself and the newest ``size - B`` rows (:meth:`recent`), then
enqueues it. Everything the bank holds is a persistent buffer, so a checkpoint of the module that
owns it saves the memory and a resume continues with exactly the same rows.

A step counter (also a buffer) counts the training iterations the bank has seen; the bank is
filled and used only once ``start`` iterations are done (XBM's warm-up: the embeddings of the
first iterations drift too fast to be worth remembering). Example::

    bank = MemoryBank(size=8192, dim=512, start=1000)
    emb, labels, indices = bank.rows()           # the valid rows (none before anything is added)
    parts = bank.recent(8192 - len(batch))      # the newest rows, as a gallery beside the batch
    ...                                          # rank the batch against them
    bank.update(batch_emb, batch_labels, batch_indices)   # enqueue (once started), count the step
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MemoryBank"]


class MemoryBank(nn.Module):
    """Ring buffer of ``size`` detached embeddings of width ``dim`` with labels and sample ids.

    Args:
        size: number of rows kept (> 0); the oldest rows are overwritten first.
        dim: embedding width; embeddings of another width raise a ValueError.
        start: iterations (calls of :meth:`update`) before the bank is filled and used; 0 uses
            it from the first iteration.
        dtype: the stored precision (float32 by default, float64 for exact references).

    Buffers (all persistent): ``embeddings`` (size, dim), ``labels`` (size,), ``indices`` (size,),
    ``next_row``, ``count`` (valid rows) and ``step`` (iterations seen).
    """

    def __init__(
        self, size: int, dim: int, start: int = 0, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        for name, value, low in (("size", size, 1), ("dim", dim, 1), ("start", start, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"memory {name} must be an integer >= {low}, got {value!r}")
        self.size, self.dim, self.start = size, dim, start
        self.register_buffer("embeddings", torch.zeros(size, dim, dtype=dtype))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("next_row", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def filled(self) -> int:
        """Number of valid rows (0 at the start, ``size`` once the ring has wrapped)."""
        return int(self.count)

    @property
    def started(self) -> bool:
        """Whether the warm-up is over: the bank is used and filled from this iteration on."""
        return int(self.step) >= self.start

    def __len__(self) -> int:
        return self.filled

    def check_width(self, embeddings: torch.Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(
                f"embeddings of shape {tuple(embeddings.shape)} do not fit the memory bank, which "
                f"holds rows of width {self.dim}; build the memory with the model's embedding "
                "width"
            )

    def recent(self, k: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The newest ``min(k, filled)`` rows as ``(embeddings, labels, indices)`` views of the
        buffers, oldest first: one part, or two where they wrap around the end of the ring."""
        n = min(max(k, 0), self.filled)
        if n == 0:
            return []
        end = int(self.next_row) or self.size  # the newest row is end - 1
        if n <= end:
            parts = [slice(end - n, end)]
        else:
            parts = [slice(self.size - (n - end), self.size), slice(0, end)]
        return [(self.embeddings[sl], self.labels[sl], self.indices[sl]) for sl in parts]

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The valid rows: ``(embeddings, labels, indices)``, views of the buffers.

        Before the ring wraps the valid rows are the first ``filled`` ones; afterwards all rows.
        """
        n = self.filled
        return self.embeddings[:n], self.labels[:n], self.indices[:n]

    @torch.no_grad()
    def enqueue(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> None:
        """Write the rows (detached) over the oldest ones; a batch larger than the bank keeps
        its last ``size`` rows."""
        self.check_width(embeddings)
        n = embeddings.shape[0]
        if labels.shape != (n,) or indices.shape != (n,):
            raise ValueError(
                f"memory bank: {n} embeddings need {n} labels and {n} indices, got shapes "
                f"{tuple(labels.shape)} and {tuple(indices.shape)}"
            )
        if n > self.size:
            embeddings, labels, indices = (
                embeddings[-self.size :],
                labels[-self.size :],
                indices[-self.size :],
            )
            n = self.size
        rows = (int(self.next_row) + torch.arange(n, device=self.embeddings.device)) % self.size
        self.embeddings[rows] = embeddings.detach().to(self.embeddings)
        self.labels[rows] = labels.to(self.labels)
        self.indices[rows] = indices.to(self.indices)
        self.next_row.fill_((int(self.next_row) + n) % self.size)
        self.count.fill_(min(self.filled + n, self.size))

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """End of an iteration: enqueue the batch if the warm-up is over, and count the step."""
        if self.started:
            self.enqueue(embeddings, labels, indices)
        self.step.add_(1)

    def reset(self) -> None:
        """Forget every row and the step count."""
        self.indices.fill_(-1)
        for buf in (self.next_row, self.count, self.step):
            buf.zero_()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, start={self.start}"
