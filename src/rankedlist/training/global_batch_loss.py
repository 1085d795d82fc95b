"""GlobalBatchLoss: a metric-learning loss computed on the global batch of a distributed run.

Each rank holds ``n_r`` rows of the global batch of ``N = sum_r n_r`` rows. DDP averages
parameter gradients over the ``W`` ranks, so for training to follow the single-process gradient
of the global batch, rank r's backward must send ``W * dL/dx`` to its rows ``x`` (L the
single-process loss of the global batch). Two strategies reach that exactly:

``local_queries`` (RLL with ``reduction="mean"``, the efficient one)
    Rank r ranks only its own queries against the gathered global gallery
    (``ref_emb``, ``ref_labels``, with ``self_index`` marking each query's own row) and returns
    ``(n_r W / N) * mean of its queries' losses``. The mean over ranks of that value is L.
    With ``gradient="paper"`` the gallery is gathered detached, since only queries receive
    gradient; with ``gradient="autograd"`` it is gathered differentiably, so the gradient every
    rank's loss sends to a gallery row is summed on the rank that owns it, and DDP's average of
    ``sum_r dL_r/dx`` gives ``dL/dx``.

``replica`` (every other loss: PML baselines with their miners, RLL ``reduction="official"``
whose query weights are normalised over the whole batch)
    Every rank computes the whole global loss L on the gathered batch in which only its own rows
    are live (the other ranks' rows are detached copies) and in the global order, so miners see
    exactly the single-process batch. A gradient-scaling identity multiplies the gradient reaching
    the local rows by W. The returned value is L itself, on every rank. Costs W times the loss
    computation (the loss is small next to the network), but is exact for any loss.

Dataset indices. Given the dataset index of each sample (gathered like the labels, in global
order), the pairs of one sample are left out: the P x K sampler repeats the images of a class
smaller than K, and two copies of an image are not each other's positive. RLL (with or without a
memory) excludes them by index like the self pair; a pair-based PML baseline gets its miner's
tuples (or all pairs) without them; a memory keeps the indices beside its rows, so older copies
are excluded too. A loss with a cross-batch memory enqueues the global batch, so its memory is the
same on every rank (RLL: ``local_queries``; PML baselines: ``replica``); RLL's memory cannot work
without the indices.

Parameters of the loss itself (ProxyAnchor's proxies) are not inside the model's DDP wrapper:
their initial value is broadcast from rank 0, and their gradient (identical on every rank in
exact arithmetic, since each rank computes the same L) is averaged over ranks by a hook on a
process group of its own, so nondeterministic kernels cannot make the ranks' proxies drift apart.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rankedlist.training.distributed import (
    DistributedContext,
    gather_embeddings,
    gather_sizes,
)

__all__ = ["GlobalBatchLoss"]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale`` (W for the replica rule)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


class GlobalBatchLoss(nn.Module):
    """``forward(embeddings, labels, indices=None) -> scalar`` loss on the global batch (see the
    module docstring); ``indices``: the samples' dataset indices (required by RLL's memory).

    Args:
        loss: the loss module: a :class:`rankedlist.losses.RankedListLoss` or a PML loss.
        name: the factory name (``"rll"``, ``"triplet"``, ...), for messages.
        miner: an optional PML miner whose tuples are passed to a PML loss.
        ctx: the distributed context; ``None`` or a single process computes the plain loss.
        num_classes: for losses with one proxy per class: labels must lie in
            ``[0, num_classes)``.
        drop_copies: for a PML loss without a memory: drop the miner's pairs (or, without a
            miner, the pairs) of one sample when ``indices`` are given (pair- and triplet-based
            losses; not proxy losses, whose tuples mean something else).

    Attributes:
        last_stats: the loss's ``last_stats`` after each call (RLL: this rank's queries; a
            memory adds ``memory_fill``), ``{}`` for baselines without a memory.
        takes_indices: whether ``forward`` uses ``indices`` (a trainer passes them then).
        needs_indices: whether it cannot do without them (RLL's memory).
        strategy: ``"single"``, ``"local_queries"`` or ``"replica"``.
    """

    def __init__(
        self,
        loss: nn.Module,
        name: str,
        *,
        miner: nn.Module | None = None,
        ctx: DistributedContext | None = None,
        num_classes: int | None = None,
        drop_copies: bool = False,
    ) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.name = name
        self.ctx = ctx
        self.num_classes = num_classes
        self.last_stats: dict[str, float] = {}
        self._is_rll = name == "rll"
        self.drop_copies = drop_copies
        self.takes_indices = bool(getattr(loss, "takes_indices", False)) or drop_copies
        self.needs_indices = bool(getattr(loss, "needs_indices", False))
        distributed = ctx is not None and ctx.is_distributed and ctx.world_size > 1
        if not distributed:
            self.strategy = "single"
        elif self._is_rll and getattr(loss, "reduction", "mean") == "mean":
            self.strategy = "local_queries"
        else:
            self.strategy = "replica"
        if distributed and any(True for _ in self.loss.parameters()):
            self._sync_loss_parameters()

    def _sync_loss_parameters(self) -> None:
        import torch.distributed as dist

        assert self.ctx is not None
        world_size = self.ctx.world_size
        self.loss.to(self.ctx.device)
        backend = dist.get_backend()
        # A group of its own: a synchronous all_reduce inside backward must not interleave with
        # DDP's asynchronous bucket all_reduces on the default group.
        group = dist.new_group(backend=backend)
        with torch.no_grad():
            for p in self.loss.parameters():
                dist.broadcast(p.data, src=0)

        def average(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=group)
            return grad / world_size

        for p in self.loss.parameters():
            if p.requires_grad:
                p.register_hook(average)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, strategy={self.strategy!r}"

    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
            raise ValueError(
                f"{self.name} loss expects embeddings of shape (batch, dim), got "
                f"{getattr(embeddings, 'shape', type(embeddings))}"
            )
        if not isinstance(labels, torch.Tensor) or labels.shape != (embeddings.shape[0],):
            raise ValueError(
                f"{self.name} loss expects labels of shape ({embeddings.shape[0]},), got "
                f"{getattr(labels, 'shape', type(labels))}"
            )
        if self.num_classes is not None and labels.numel() > 0:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"{self.name} loss has one proxy per class and needs labels in "
                    f"[0, {self.num_classes}), got labels in [{lo}, {hi}]: map the training "
                    "labels to 0..num_classes-1 or pass the right num_classes"
                )

    def _compute(self, emb: torch.Tensor, labels: torch.Tensor, **ref: Any) -> torch.Tensor:
        if self._is_rll:
            out = self.loss(emb, labels, **ref)
            self.last_stats = dict(getattr(self.loss, "last_stats", {}) or {})
            return out
        ids = ref.get("indices")
        if ids is not None:
            ids = ids.to(device=emb.device, dtype=torch.long)
        indices_tuple = self.miner(emb, labels) if self.miner is not None else None
        if ids is not None and getattr(self.loss, "takes_indices", False):
            out = self.loss(emb, labels, indices_tuple, indices=ids)  # a memory drops them
        else:
            if ids is not None and self.drop_copies:
                from rankedlist.losses.pml_cross_batch_memory import drop_copy_pairs

                indices_tuple = drop_copy_pairs(indices_tuple, labels, ids)
            out = self.loss(emb, labels, indices_tuple)
        self.last_stats = dict(getattr(self.loss, "last_stats", None) or {})  # a memory's fill
        return out

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of the global batch (this rank's share of it under ``local_queries``)."""
        self._check_inputs(embeddings, labels)
        if self.needs_indices and indices is None:
            raise ValueError(
                f"{self.name} loss with a memory needs the samples' dataset indices: "
                "call it as loss(embeddings, labels, indices)"
            )
        if not self.takes_indices:
            indices = None  # a loss that has no use for them (proxies)
        if indices is not None and getattr(indices, "shape", None) != labels.shape:
            raise ValueError(
                f"{self.name} loss expects one dataset index per row, indices of shape "
                f"{tuple(labels.shape)}, got {getattr(indices, 'shape', type(indices))}"
            )
        if self.strategy == "single":
            ids = {"indices": indices} if indices is not None else {}
            return self._compute(embeddings, labels, **ids)
        ctx = self.ctx
        assert ctx is not None
        labels = labels.to(embeddings.device)
        n = embeddings.shape[0]
        sizes = gather_sizes(n, ctx)
        total = sum(sizes)
        start = sum(sizes[: ctx.rank])
        all_labels = gather_embeddings(labels, ctx, differentiable=False, sizes=sizes)
        ids = {}
        if indices is not None:  # a memory enqueues the global batch, in global order
            indices = indices.to(device=embeddings.device, dtype=torch.long)
            all_ids = gather_embeddings(indices, ctx, differentiable=False, sizes=sizes)
            ids = {"indices": indices, "ref_indices": all_ids}

        if self.strategy == "local_queries":
            differentiable = getattr(self.loss, "gradient", "paper") == "autograd"
            if differentiable and not embeddings.requires_grad:
                differentiable = False  # evaluation-time call: nothing to send back
            ref = gather_embeddings(embeddings, ctx, differentiable=differentiable, sizes=sizes)
            self_index = torch.arange(start, start + n, device=embeddings.device)
            out = self._compute(
                embeddings, labels, ref_emb=ref, ref_labels=all_labels, self_index=self_index, **ids
            )
            # Mean over local queries -> this rank's share, so that the mean over ranks of the
            # returned values (and DDP's mean of the gradients) is the global-batch loss.
            return out * (n * ctx.world_size / total)

        # replica: the whole global loss, with only this rank's rows live, in global order.
        others = gather_embeddings(embeddings, ctx, differentiable=False, sizes=sizes)
        local = _ScaleGrad.apply(embeddings, float(ctx.world_size))
        all_emb = torch.cat([others[:start], local, others[start + n :]], dim=0)
        if ids:
            ids = {"indices": ids["ref_indices"]}  # every query of the global batch
        return self._compute(all_emb, all_labels, **ids)
