"""The P x K class-balanced batch sampler of the Ranked List Loss protocol.

Every global batch holds P classes with K images each. Rules:

* Epoch. The classes are shuffled once per epoch and cut into groups of P, so no class repeats
  within an epoch; an epoch is ``floor(num_classes / P)`` batches and the remaining
  ``num_classes mod P`` classes wait for a later epoch (a fresh shuffle each epoch, so none is
  left out for long). Epochs are as short as on the paper's Caffe code: CUB with P = 20 has 5
  batches per epoch; train by iterations and call :meth:`PKSampler.set_epoch` each epoch.
* Instances. A class with at least K images gives K distinct ones at random; a class with fewer
  gives all of them once plus random repeats up to K (each copy is augmented independently by the
  dataset's transform).
* Determinism. The order depends only on ``(seed, epoch)``: the class order comes from
  ``numpy.random.default_rng([seed, epoch])`` and batch ``b``'s images from
  ``default_rng([seed, epoch, b])``, so any batch can be rebuilt without replaying earlier ones.
* Distributed. Every rank builds the same global batch (class-major: K images of the first class,
  then the second, ...) and yields the contiguous slice ``[rank * P*K/W, (rank + 1) * P*K/W)``.
  ``P*K`` must be divisible by ``world_size``. When ``P`` is divisible by ``world_size`` each rank
  therefore gets ``P/W`` whole classes; otherwise a class can straddle two ranks, which is fine for
  the loss because distributed training ranks each query against the gathered global batch.
* Resuming. ``set_epoch(epoch, start_batch=b)`` makes the next pass start at batch ``b`` of that
  epoch (the batches before it are skipped, not replayed); ``len()`` is then the number of batches
  left. A later ``set_epoch(epoch + 1)`` starts from batch 0 again.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["PKSampler"]


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding this rank's share of P-classes x K-images global batches.

    Args:
        labels: one class label per dataset item (any hashable integers; 1-D).
        p: classes per global batch.
        k: images per class; ``k=1`` warns, since a batch then holds no positive pair.
        seed: base seed; the order is a function of ``(seed, epoch)`` only.
        world_size: number of distributed ranks sharing each global batch.
        rank: this process's rank in ``0..world_size-1``.

    Use as ``DataLoader(dataset, batch_sampler=PKSampler(dataset.labels, p, k))`` and call
    :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        p: int,
        k: int,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
        for name, value in (("p", p), ("k", k), ("world_size", world_size)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if (p * k) % world_size:
            raise ValueError(
                f"the global batch P*K = {p}*{k} = {p * k} must be divisible by world_size="
                f"{world_size}; change P or K"
            )
        if k == 1:
            # Legal (e.g. for proxy losses), but pair-based losses such as RLL then get no
            # positive pair in any batch and learn nothing from positives.
            warnings.warn(
                f"PKSampler with k=1: each of the P={p} classes appears once per batch, so no "
                "batch holds a positive pair and pair-based losses (such as the Ranked List "
                "Loss) get no positives; use k >= 2",
                UserWarning,
                stacklevel=2,
            )
        classes, inverse = np.unique(labels, return_inverse=True)
        if len(classes) < p:
            raise ValueError(
                f"P={p} classes per batch but the labels hold only {len(classes)} classes; lower P"
            )
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))
        self._members = np.split(order, bounds[:-1])  # dataset indices of each class
        self.p, self.k = int(p), int(k)
        self.seed, self.world_size, self.rank = int(seed), int(world_size), int(rank)
        self.num_classes = len(classes)
        self.batches_per_epoch = self.num_classes // self.p
        self.local_batch_size = self.p * self.k // self.world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch of the next pass, optionally resuming at batch ``start_batch``."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(
                f"start_batch must be in 0..{self.batches_per_epoch} (batches per epoch), "
                f"got {start_batch}"
            )
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def global_batch(self, batch: int, class_order: np.ndarray | None = None) -> list[int]:
        """The full P*K global batch ``batch`` of the current epoch (all ranks' indices)."""
        if class_order is None:
            class_order = self._class_order()
        chosen = class_order[batch * self.p : (batch + 1) * self.p]
        rng = np.random.default_rng([self.seed, self.epoch, batch])
        out: list[int] = []
        for c in chosen:
            members = self._members[c]
            if len(members) >= self.k:
                picks = rng.choice(members, size=self.k, replace=False)
            else:  # every image once, then random repeats up to K
                extra = rng.choice(members, size=self.k - len(members), replace=True)
                picks = np.concatenate([rng.permutation(members), extra])
            out.extend(int(i) for i in picks)
        return out

    def _class_order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_classes)

    def __iter__(self) -> Iterator[list[int]]:
        class_order = self._class_order()
        lo = self.rank * self.local_batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            yield self.global_batch(b, class_order)[lo : lo + self.local_batch_size]

    def __len__(self) -> int:
        """Batches the next pass yields: ``batches_per_epoch - start_batch``."""
        return self.batches_per_epoch - self.start_batch

    def __repr__(self) -> str:
        return (
            f"PKSampler(p={self.p}, k={self.k}, classes={self.num_classes}, "
            f"batches_per_epoch={self.batches_per_epoch}, seed={self.seed}, "
            f"world_size={self.world_size}, rank={self.rank})"
        )
