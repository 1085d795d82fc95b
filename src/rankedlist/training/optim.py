"""Optimisers with per-group learning rates, and learning-rate schedules over iterations.

The paper fine-tunes a pretrained backbone with the new embedding layers at 10x (100x on CUB)
the base learning rate; proxy-based baselines train their proxies at their own rate. Weight decay
is not applied to one-dimensional parameters (biases, normalisation scales and shifts), as in the
Caffe prototxts the paper used (decay_mult 0 on biases and BN) and in timm's recipes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from rankedlist.training.config_schema import OptimConfig, ScheduleConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def build_optimizer(
    model: nn.Module, config: OptimConfig, loss_modules: Iterable[nn.Module] = ()
) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over named parameter groups.

    Groups: ``backbone`` at ``lr``, ``new`` (from ``model.parameter_groups()["new"]``) at
    ``lr * lr_multiplier``, ``loss`` (parameters of the loss modules, e.g. proxies) at
    ``lr * loss_lr_multiplier``; each split into a decayed and a non-decayed part (1-D tensors).
    Trainable model parameters that ``parameter_groups()`` does not list join the backbone.
    """
    base = _unwrap(model)
    groups_of = getattr(base, "parameter_groups", None)
    named = groups_of() if callable(groups_of) else {"backbone": list(base.parameters())}
    new = [p for p in named.get("new", []) if p.requires_grad]
    new_ids = {id(p) for p in new}
    backbone = [p for p in base.parameters() if p.requires_grad and id(p) not in new_ids]
    loss_params = [p for m in loss_modules for p in m.parameters() if p.requires_grad]

    groups: list[dict] = []
    for name, params, mult in (
        ("backbone", backbone, 1.0),
        ("new", new, config.lr_multiplier),
        ("loss", loss_params, config.loss_lr_multiplier),
    ):
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for suffix, ps, wd in (("", decay, config.weight_decay), ("_no_decay", no_decay, 0.0)):
            if ps:
                groups.append(
                    {
                        "name": name + suffix,
                        "params": ps,
                        "lr": config.lr * mult,
                        "weight_decay": wd,
                    }
                )
    if not groups:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    raise ValueError(f"optim.name = {config.name!r} is unknown; choose 'sgd' or 'adamw'")


def lr_factor(config: ScheduleConfig, iterations: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate at iteration ``i`` (0-based), warm-up included."""

    def factor(i: int) -> float:
        if config.name == "multistep":
            value = config.gamma ** bisect.bisect_right(config.milestones, i)
        elif config.name == "cosine":
            progress = min(i, iterations) / max(1, iterations)
            value = config.min_lr_factor + (1.0 - config.min_lr_factor) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )
        elif config.name == "constant":
            value = 1.0
        else:
            raise ValueError(
                f"schedule.name = {config.name!r} is unknown; choose multistep, cosine or constant"
            )
        if i < config.warmup_iters:
            value *= config.warmup_factor + (1.0 - config.warmup_factor) * i / config.warmup_iters
        return value

    factor(0)  # fail now, not at the first step, on an unknown schedule name
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, iterations: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler (call ``step()`` after every optimiser step).

    Every parameter group keeps its own base rate (so the multipliers survive); the schedule
    multiplies all of them by :func:`lr_factor`.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, iterations))
