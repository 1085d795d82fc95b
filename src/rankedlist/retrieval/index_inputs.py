"""The checks and conversions of what goes into an index: embeddings, labels, item names."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["as_items", "as_labels", "as_matrix", "normalize"]


def as_matrix(x: Any, name: str) -> np.ndarray:
    """A 2-D float32 numpy array (1-D means one row); torch tensors are moved to the CPU."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}") from err
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be an (N, D) array with D >= 1, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def normalize(arr: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(
            f"{name} rows {zero[:10].tolist()} are all zeros and have no direction; a cosine "
            "index needs non-zero embeddings"
        )
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def as_labels(labels: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be a 1-D array of {n} labels (one per row), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(arr == np.round(arr)):
            raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def as_items(items: Any, n: int, name: str) -> list[str]:
    if isinstance(items, str | os.PathLike):
        raise TypeError(f"{name} must be a sequence of names, got a single {type(items).__name__}")
    out = [os.fspath(i) if isinstance(i, os.PathLike) else i for i in items]
    bad = [i for i in out if not isinstance(i, str)]
    if bad:
        raise TypeError(f"{name} must be strings or paths, got {type(bad[0]).__name__}")
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries but there are {n} embeddings")
    return out
