"""One optimisation step: forward under autocast, one loss per head summed, backward, clip, step,
with divergence caught on every rank at once."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from rankedlist.training import distributed as dist_utils
from rankedlist.training.amp import autocast
from rankedlist.training.checkpoint import EXPLODED
from rankedlist.training.config_schema import Config
from rankedlist.training.health import NonFiniteLossError, is_healthy, max_abs

__all__ = ["train_one_step"]


def train_one_step(
    model: nn.Module,
    losses: Mapping[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: Config,
    ctx: dist_utils.DistributedContext,
    stop_requested: bool = False,
    indices: torch.Tensor | None = None,
) -> tuple[dict[str, float], bool]:
    """One optimisation step; returns (logged values, stop agreed by every rank).

    ``indices`` are the samples' dataset indices, passed to the losses that declare
    ``takes_indices``: the pairs of two copies of one sample (the P x K sampler repeats a small
    class's images) are left out by them, and a cross-batch memory excludes older copies.

    Raises :class:`NonFiniteLossError` on every rank at once when any rank's embeddings, loss or
    gradients are not finite, or when the update explodes the parameters (``|w| > 1e12``).
    The message names only what went wrong; :func:`train_loop` adds the iteration and the way on.
    """
    model.train()
    with autocast(config.train.amp, ctx.device):
        outputs = model(images)
    # The losses run in float32: their exp weights overflow float16 (see rankedlist.losses).
    outputs = {head: out.float() for head, out in outputs.items()}
    bad_heads = [head for head in losses if not bool(torch.isfinite(outputs[head]).all())]
    for head in bad_heads:
        # Ones stand in so every rank still calls the loss (a global-batch loss gathers inside):
        # a rank that raised here would leave the others waiting in that collective. (Not zeros:
        # a zero row cannot be L2-normalised and the loss rejects it.)
        outputs[head] = torch.ones_like(outputs[head])
    parts = {
        head: fn(outputs[head], labels, indices)
        if _takes_indices(fn)
        else fn(outputs[head], labels)
        for head, fn in losses.items()
    }
    loss = sum(parts.values())
    # One collective per step: the flags every rank must agree on, and the logged losses
    # (each rank's loss is its share of the global batch's; their mean is the global loss).
    local = [float(bool(bad_heads)), float(not torch.isfinite(loss)), float(stop_requested)]
    shared = dist_utils.all_reduce_mean(
        torch.tensor(local + [float(v.detach()) for v in parts.values()], dtype=torch.float64), ctx
    )
    if shared[0] > 0:
        where = f" (head {', '.join(bad_heads)})" if bad_heads else " on another process"
        raise NonFiniteLossError(f"the embeddings are not finite{where}")
    if shared[1] > 0:
        raise NonFiniteLossError(f"the loss is not finite (loss = {sum(shared[3:].tolist())})")

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    values: dict[str, float] = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if config.optim.clip_grad_norm is not None:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, config.optim.clip_grad_norm)
        values["grad_norm"] = float(norm)
    # With a float16 GradScaler an inf gradient is routine (the scaler skips that step and lowers
    # its scale); without one it means divergence.
    grad_peak = 0.0 if scaler.is_enabled() else max_abs(p.grad for p in params)
    if math.isfinite(grad_peak):
        scaler.step(optimizer)
        scaler.update()
    param_peak = max_abs(params)
    # The gradients of DDP parameters are all-reduced, so these agree across ranks; loss
    # parameters (proxies) are not, so the flags are shared anyway (one tiny collective).
    flags = dist_utils.all_reduce_mean(
        torch.tensor(
            [float(not math.isfinite(grad_peak)), float(not is_healthy(param_peak))],
            dtype=torch.float64,
        ),
        ctx,
    )
    if flags[0] > 0:
        raise NonFiniteLossError("the gradients are not finite")
    if flags[1] > 0:
        raise NonFiniteLossError(
            f"the update exploded the parameters (max |w| = {param_peak:.3g}, limit {EXPLODED:g})"
        )

    head_losses = dict(zip(parts, shared[3:].tolist(), strict=True))
    values["loss"] = sum(head_losses.values())
    stats: dict[str, list[float]] = {}
    for head, fn in losses.items():
        if len(losses) > 1:
            values[f"loss/{head}"] = head_losses[head]
        for key, value in (getattr(fn, "last_stats", None) or {}).items():
            stats.setdefault(key, []).append(float(value))
            if len(losses) > 1:
                values[f"{key}/{head}"] = float(value)
    values.update({key: sum(v) / len(v) for key, v in stats.items()})  # mean over heads
    return values, bool(shared[2] > 0)


def _takes_indices(loss_fn: nn.Module) -> bool:
    return bool(getattr(loss_fn, "takes_indices", False))
