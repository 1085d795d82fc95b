"""Divergence detection: non-finite embeddings, losses and gradients, exploded parameters.

A diverging run must stop on every process at the same step, with a message that names the
iteration, what went wrong, the last checkpoint that is safe to resume and the usual remedies,
and must never write a checkpoint that holds non-finite or exploded weights (resuming one diverges
again at once). The checks here are cheap: one fused reduction per group of tensors and one host
synchronisation, not one per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from rankedlist.training.checkpoint import EXPLODED

__all__ = ["NonFiniteLossError", "divergence_message", "max_abs"]


class NonFiniteLossError(RuntimeError):
    """Training diverged (a non-finite embedding, loss or gradient, or exploded parameters); the
    run stopped on every process without saving the bad state."""


def max_abs(tensors: Iterable[torch.Tensor | None]) -> float:
    """The largest ``|x|`` over all ``tensors`` (NaN if any holds a NaN; 0 for none)."""
    peaks = [t.detach().abs().amax().float() for t in tensors if t is not None and t.numel()]
    if not peaks:
        return 0.0
    # amax propagates NaN, so one NaN anywhere makes the result NaN: one sync for all tensors.
    return float(torch.stack([p.to(peaks[0].device) for p in peaks]).amax())


def is_healthy(value: float, limit: float = EXPLODED) -> bool:
    """Finite and not exploded."""
    return math.isfinite(value) and abs(value) <= limit


def divergence_message(
    iteration: int,
    what: str,
    last_good: Path | None,
    last_good_iteration: int | None,
    lr: float,
    clip_grad_norm: float | None,
    amp: str,
) -> str:
    """The one message a user reads when a run diverges."""
    if last_good is not None:
        kept = (
            f"the last checkpoint with finite parameters and optimizer state is {last_good} "
            f"(iteration {last_good_iteration})"
        )
    else:
        kept = "no checkpoint had been written yet"
    remedies = [f"lower optim.lr (now {lr:g})"]
    if clip_grad_norm is None:
        remedies.append("set optim.clip_grad_norm (e.g. 1.0)")
    else:
        remedies.append(f"lower optim.clip_grad_norm (now {clip_grad_norm:g})")
    if amp != "none":
        remedies.append("turn AMP off (train.amp=none)")
    how = (
        f"resume from it with the change (rankedlist train --resume {last_good} "
        "--allow-config-change optim.lr=...) or train again (--overwrite)"
        if last_good is not None
        else "then train again (--overwrite)"
    )
    return (
        f"training diverged at iteration {iteration}: {what}; every process stopped and "
        f"{kept}. Remedies: {', '.join(remedies)}; {how}"
    )
