"""Work buffers of the paper kernel, kept between calls on CPU (private)."""

from __future__ import annotations

import threading

import torch

__all__ = ["release_workspace", "work_buffers", "workspace_rows"]

# Work buffers up to this many bytes are kept between calls on CPU: the CPU allocator hands large
# blocks back to the OS, and touching fresh pages again costs as much as several full passes over
# the buffers (CUDA has its own caching allocator). 288 MiB: the four float32 buffers of a chunk of
# 256 queries (a full-speed product) against a 65,536-row memory plus its batch.
_WORKSPACE_MAX_BYTES = 288 * 1024 * 1024
_N_BUFFERS = 4
_workspace = threading.local()


def work_buffers(rows: int, cols: int, dtype: torch.dtype, device: torch.device):
    """``_N_BUFFERS`` contiguous ``rows x cols`` buffers, reused between calls on CPU."""
    numel = _N_BUFFERS * rows * cols
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or nbytes > _WORKSPACE_MAX_BYTES:
        flat = torch.empty(numel, dtype=dtype, device=device)
    else:
        cache = getattr(_workspace, "buffers", None)
        if cache is None:
            cache = _workspace.buffers = {}
        flat = cache.get(dtype)
        if flat is None or flat.numel() < numel:
            cache.pop(dtype, None)  # release the smaller one first
            flat = cache[dtype] = torch.empty(numel, dtype=dtype)
    return list(flat[:numel].view(_N_BUFFERS, rows, cols).unbind(0))


def release_workspace() -> None:
    """Free the work buffers kept between calls (this thread's): what a long-lived process that
    has finished with the loss, or a test that measures memory, calls."""
    _workspace.__dict__.pop("buffers", None)


def workspace_rows(cols: int, dtype: torch.dtype) -> int:
    """The most rows of ``cols`` columns whose work buffers the workspace keeps between calls."""
    size = torch.empty((), dtype=dtype).element_size()
    return max(1, _WORKSPACE_MAX_BYTES // (_N_BUFFERS * max(cols, 1) * size))
