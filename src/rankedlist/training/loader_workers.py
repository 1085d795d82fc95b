"""How many data-loader worker processes a run uses when ``data.num_workers`` is left unset."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_num_workers"]


def resolve_num_workers(num_workers: int | None, device: torch.device | str) -> int:
    """``data.num_workers``, with ``None`` resolved for the machine and the training device.

    On a CPU device the answer is 0: the training step's own threads use every core, and a
    worker process takes one of them from it. Measured on 2 cores with the glyph demo
    (``benchmarks/train_throughput.py``, several runs), the full step reached 0.87-0.90 of the
    compute floor without workers and 0.67-0.78 with one or two, and the JPEG/resnet18 setting
    gained nothing from them.
    On an accelerator the cores are free for the data: one worker per core this process may use,
    less one for the training loop itself, shared with the other processes of a ``torchrun`` on
    this machine (``LOCAL_WORLD_SIZE``), at most 8 (more rarely pays on one machine).
    """
    if num_workers is not None:
        return num_workers
    if torch.device(device).type == "cpu":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, cores // local_processes - 1))
