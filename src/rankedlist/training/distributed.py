"""Distributed training primitives on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

rankedlist has no launcher of its own: ``torchrun`` (single node, or several through its
rendezvous) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them, joins the process group (nccl on CUDA, gloo on CPU) and
returns a :class:`DistributedContext` that the trainer passes around. Without those variables
everything here degrades to a single process and the collectives become identities, so the same
training code runs with and without ``torchrun``.

What is written by hand and why:

* :func:`gather_embeddings` with ``differentiable=True`` uses a small autograd function instead
  of ``torch.distributed.nn.functional.all_gather``: that one is deprecated (FutureWarning) in
  favour of a private module, and on gloo its backward emulates reduce-scatter with one scatter
  per rank. Ours all-reduces (SUM) the gradient of the gathered tensor and keeps this rank's
  rows, so the rank that owns an embedding receives the sum of the gradients every rank's loss
  sends to it: the convention under which DDP's gradient averaging gives the single-process
  gradient of the global batch (see :mod:`rankedlist.training.loss_factory`).
* Unequal per-rank sizes (the last evaluation shard, a ragged batch) are handled by padding to the
  largest size, because ``all_gather`` needs equal shapes.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistributedContext",
    "init_distributed",
    "cleanup_distributed",
    "wrap_model",
    "unwrap_model",
    "gather_embeddings",
    "gather_sizes",
    "shard_indices",
    "gather_eval",
    "barrier",
    "broadcast_object",
    "all_reduce_mean",
]

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine (the GPU index on CUDA).
        device: the device this process computes on.
        is_main: True on rank 0, the only rank that logs, checkpoints and writes the report.
        is_distributed: True when a process group with more than one process is active.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True
    is_distributed: bool = False


def _resolve_device(device: str, local_rank: int, distributed: bool) -> torch.device:
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available on this machine; "
                "use device=cpu or device=auto"
            )
        if distributed:
            if name not in ("cuda", f"cuda:{local_rank}"):
                raise ValueError(
                    f"device={device!r} conflicts with torchrun's LOCAL_RANK={local_rank}: under "
                    "torchrun each process uses the GPU of its local rank; pass device=cuda "
                    "(or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
                )
            if local_rank >= torch.cuda.device_count():
                raise ValueError(
                    f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are "
                    "visible: start at most that many processes per node (--nproc_per_node)"
                )
            return torch.device("cuda", local_rank)
        return torch.device(name)
    raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def init_distributed(device: str = "auto") -> DistributedContext:
    """Detect the torchrun environment and join the process group.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or, in a single
            process, ``"cuda:N"``. Under torchrun each process takes the GPU of its
            ``LOCAL_RANK``.

    Returns:
        The :class:`DistributedContext`. With no torchrun variables (or ``WORLD_SIZE=1``) this is a
        single-process context and no process group is created.

    Raises:
        ValueError: a torchrun variable is missing or malformed, or the device cannot be used.
    """
    present = [v for v in _TORCHRUN_VARIABLES if v in os.environ]
    if "WORLD_SIZE" not in os.environ:
        if present:
            raise ValueError(
                f"partial distributed environment: {present} are set but WORLD_SIZE is not; "
                "launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
                "MASTER_PORT) or unset these variables"
            )
        return DistributedContext(device=_resolve_device(device, 0, False))
    try:
        world_size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"torchrun variables must be integers: {err}") from err
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid RANK={rank} for WORLD_SIZE={world_size}")
    if world_size == 1:
        return DistributedContext(device=_resolve_device(device, local_rank, False))
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing and not dist.is_initialized():
        raise ValueError(
            f"WORLD_SIZE={world_size} but {missing} not set: launch with torchrun, or set them "
            "to the address and a free port of the rank-0 machine"
        )

    dev = _resolve_device(device, local_rank, True)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            # device_id binds the communicator to this GPU now instead of guessing it later.
            dist.init_process_group(backend="nccl", init_method="env://", device_id=dev)
        else:
            dist.init_process_group(backend="gloo", init_method="env://")
    return DistributedContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=dev,
        is_main=rank == 0,
        is_distributed=True,
    )


def cleanup_distributed(ctx: DistributedContext) -> None:
    """Leave the process group (a no-op in a single process or when already left)."""
    if ctx.is_distributed and dist.is_available() and dist.is_initialized():
        # Objects that hold the group (a DDP model in a reference cycle) are freed first, so that
        # gloo's threads stop here and not during interpreter shutdown, where a rank was once
        # seen to abort ("terminate called without an active exception") after a saved stop.
        gc.collect()
        dist.destroy_process_group()


def wrap_model(
    model: nn.Module, ctx: DistributedContext, *, find_unused_parameters: bool = False
) -> nn.Module:
    """Move ``model`` to ``ctx.device`` and wrap it in DistributedDataParallel when distributed.

    DDP averages parameter gradients over ranks after each backward pass and broadcasts rank 0's
    parameters and buffers, so every rank starts from the same weights. Dict outputs (the
    multi-level heads) are fine. ``find_unused_parameters`` stays False (faster) because every
    head of an :class:`EmbeddingModel` feeds a loss; set it when some trainable parameter does not
    take part in the loss. In a single process the model is returned unwrapped.
    """
    model = model.to(ctx.device)
    if not ctx.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (for checkpoints, ``fuse``, ``parameter_groups``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _active(ctx: DistributedContext | None) -> bool:
    return ctx is not None and ctx.is_distributed and ctx.world_size > 1


def _comm_device(ctx: DistributedContext) -> torch.device:
    # nccl only moves CUDA tensors; gloo moves CPU tensors (and CUDA ones through a copy).
    backend = dist.get_backend()
    return ctx.device if backend == "nccl" else torch.device("cpu")


def gather_sizes(n: int, ctx: DistributedContext) -> list[int]:
    """Every rank's ``n``, in rank order (``[n]`` in a single process)."""
    if not _active(ctx):
        return [int(n)]
    local = torch.tensor([int(n)], dtype=torch.long, device=_comm_device(ctx))
    out = [torch.zeros_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad], dim=0)


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Plain (non-differentiable) all_gather of tensors whose first dimension may differ."""
    padded = _pad_rows(x.contiguous(), max(sizes))
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return [t[:s] for t, s in zip(out, sizes, strict=True)]


class _DifferentiableAllGather(torch.autograd.Function):
    """all_gather whose backward returns the SUM over ranks of the gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        ctx.rank = rank
        return torch.cat(_all_gather_padded(x, sizes), dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        # Every rank holds the gradient of its own loss w.r.t. the whole gathered tensor; the
        # sum over ranks of the rows this rank owns is the gradient its local input receives.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_embeddings(
    x: torch.Tensor,
    ctx: DistributedContext | None,
    differentiable: bool,
    sizes: list[int] | None = None,
) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0 in rank order.

    Args:
        x: this rank's rows (embeddings or labels); ranks may hold different numbers of rows.
        ctx: the distributed context; in a single process ``x`` is returned as is.
        differentiable: False gathers a detached copy (no gradient flows back: the gallery of
            RLL's ``gradient="paper"``). True lets gradients flow to the rank that owns each row,
            summed over ranks (see the module docstring).
        sizes: every rank's row count if already known (from :func:`gather_sizes`); saves one
            small collective.
    """
    if not _active(ctx):
        return x
    assert ctx is not None
    if sizes is None:
        sizes = gather_sizes(x.shape[0], ctx)
    if differentiable:
        if not x.requires_grad:
            raise ValueError(
                "gather_embeddings(differentiable=True) got a tensor that does not require grad; "
                "pass differentiable=False for tensors without gradient (labels, eval outputs)"
            )
        return _DifferentiableAllGather.apply(x, sizes, ctx.rank)
    return torch.cat(_all_gather_padded(x.detach(), sizes), dim=0)


def shard_indices(n: int, ctx: DistributedContext | None) -> np.ndarray:
    """This rank's contiguous shard of ``range(n)`` for evaluation.

    Shards are contiguous, in rank order, and differ in size by at most one (``numpy.array_split``
    sizes), so concatenating every rank's outputs in rank order restores dataset order; this is
    what :func:`gather_eval` does. No index is repeated or dropped (unlike DistributedSampler,
    which pads), so metrics see each example exactly once.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not _active(ctx):
        return np.arange(n, dtype=np.int64)
    assert ctx is not None
    base, extra = divmod(n, ctx.world_size)
    # The first `extra` ranks take one more row: numpy.array_split's sizes.
    starts = [r * base + min(r, extra) for r in range(ctx.world_size + 1)]
    return np.arange(starts[ctx.rank], starts[ctx.rank + 1], dtype=np.int64)


def _gather_eval_tensor(x: torch.Tensor, ctx: DistributedContext, sizes: list[int]):
    dev = x.device
    comm = _comm_device(ctx)
    y = x.detach().to(comm)
    # gloo's bfloat16/float16 support varies by version: move floats as float32.
    if y.is_floating_point() and y.dtype not in (torch.float32, torch.float64):
        y = y.float()
    out = torch.cat(_all_gather_padded(y, sizes), dim=0)
    return out.to(device=dev, dtype=x.dtype)


def gather_eval(
    embeddings: torch.Tensor | Mapping[str, torch.Tensor],
    labels: torch.Tensor | np.ndarray,
    ctx: DistributedContext | None,
) -> tuple[Any, Any]:
    """Concatenate every rank's evaluation outputs in dataset order, on every rank.

    Each rank evaluates the rows :func:`shard_indices` gives it; this undoes the sharding.

    Args:
        embeddings: this rank's ``(n_local, D)`` tensor, or a dict of them (one per head).
        labels: this rank's ``(n_local,)`` labels, a tensor or a numpy array.
        ctx: the distributed context; in a single process the inputs are returned unchanged.

    Returns:
        ``(embeddings, labels)`` for the whole dataset, of the same types and devices as the
        inputs (a dict stays a dict; numpy labels stay numpy).
    """
    is_numpy = isinstance(labels, np.ndarray)
    lab = torch.from_numpy(np.ascontiguousarray(labels)) if is_numpy else labels
    if not isinstance(lab, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor or numpy array, got {type(labels)}")
    single = isinstance(embeddings, torch.Tensor)
    embs = {"_": embeddings} if single else dict(embeddings)
    for key, e in embs.items():
        if not isinstance(e, torch.Tensor) or e.shape[0] != lab.shape[0]:
            name = "embeddings" if single else f"embeddings[{key!r}]"
            raise ValueError(
                f"{name} must be a tensor with one row per label ({lab.shape[0]} labels), "
                f"got {getattr(e, 'shape', type(e))}"
            )
    if not _active(ctx):
        return embeddings, labels
    assert ctx is not None
    sizes = gather_sizes(lab.shape[0], ctx)
    out_embs = {k: _gather_eval_tensor(e, ctx, sizes) for k, e in embs.items()}
    out_lab = _gather_eval_tensor(lab, ctx, sizes)
    out_e: Any = out_embs["_"] if single else out_embs
    return out_e, (out_lab.numpy() if is_numpy else out_lab)


def barrier(ctx: DistributedContext | None) -> None:
    """Wait until every rank arrives (a no-op in a single process)."""
    if not _active(ctx):
        return
    assert ctx is not None
    if ctx.device.type == "cuda":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistributedContext | None, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (e.g. a run folder name chosen on rank 0)."""
    if not _active(ctx):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: float | torch.Tensor, ctx: DistributedContext | None):
    """The mean over ranks of ``value`` (a number or a tensor; same type back, no gradient)."""
    if not _active(ctx):
        return value
    assert ctx is not None
    is_tensor = isinstance(value, torch.Tensor)
    t = value.detach() if is_tensor else torch.tensor(float(value), dtype=torch.float64)
    orig_device, orig_dtype = t.device, t.dtype
    work = t.to(_comm_device(ctx))
    if not work.is_floating_point() or work.dtype not in (torch.float32, torch.float64):
        work = work.double()
    work = work.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    work /= ctx.world_size
    if is_tensor:
        if not orig_dtype.is_floating_point:
            orig_dtype = work.dtype
        return work.to(device=orig_device, dtype=orig_dtype)
    return float(work.item())
