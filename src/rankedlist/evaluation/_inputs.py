"""Input checking and conversion shared by the evaluation functions.

Everything here is O(N): embeddings become L2-normalised float32 tensors on their own device,
labels become dense int64 numpy ids so that per-class counts are one ``np.bincount``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = torch.Tensor | np.ndarray


def as_embeddings(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a 2-D, finite, L2-normalised float32 tensor (same device for tensors).

    Computing in float32 whatever the input dtype keeps half-precision embeddings from
    producing spurious ties.
    """
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must be a float array, got numpy dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be a real float tensor, got dtype {t.dtype}")
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}; "
            "convert it with torch.as_tensor(...)"
        )
    if t.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (num_items, embedding_dim), got shape {tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows): there is nothing to evaluate")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has embedding dimension 0")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"{name} contains NaN or infinite values: check the model outputs "
            "(a diverged run or an fp16 overflow)"
        )
    return F.normalize(t, p=2, dim=1)


def as_labels(y: Any, n: int, name: str, emb_name: str) -> np.ndarray:
    """Return ``y`` as a 1-D int64 numpy array of length ``n``."""
    if isinstance(y, torch.Tensor):
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise TypeError(
                f"{name} must hold integers, got torch dtype {y.dtype}; cast with .long()"
            )
        arr = y.detach().cpu().numpy()
    elif isinstance(y, np.ndarray | Sequence):
        arr = np.asarray(y)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"{name} must hold integers, got dtype {arr.dtype}; cast with .astype(np.int64)"
            )
        if not arr.size:
            arr = arr.astype(np.int64)
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor, numpy array or sequence of ints, "
            f"got {type(y).__name__}"
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but {emb_name} has {n} rows: "
            "they must have the same length"
        )
    return arr.astype(np.int64, copy=False)


@dataclass
class RetrievalProblem:
    """Checked, normalised inputs of one retrieval evaluation.

    ``gallery is query`` (the same tensor object) when the query set is the gallery; then
    ``self_index[i] = i`` and each query's own row is excluded by index.
    """

    query: torch.Tensor
    gallery: torch.Tensor
    query_ids: np.ndarray  # dense class ids in [0, num_classes)
    gallery_ids: np.ndarray
    gallery_counts: np.ndarray  # number of gallery items per class id
    num_relevant: np.ndarray  # R per query (own item excluded)
    same_set: bool

    @property
    def num_gallery(self) -> int:
        """Number of items a query can retrieve (its own item excluded)."""
        return self.gallery.shape[0] - int(self.same_set)


def prepare(
    query: ArrayLike,
    query_labels: Any,
    gallery: ArrayLike | None,
    gallery_labels: Any,
) -> RetrievalProblem:
    """Check and convert the inputs of a retrieval evaluation (see ``retrieval_metrics``)."""
    same_set = gallery is None or gallery is query
    if gallery is None and gallery_labels is not None:
        raise ValueError(
            "gallery_labels was given without gallery: pass both, or neither to search the "
            "query set against itself"
        )
    q = as_embeddings(query, "query")
    q_lab = as_labels(query_labels, q.shape[0], "query_labels", "query")
    if same_set:
        if gallery_labels is not None and gallery_labels is not query_labels:
            g_lab_check = as_labels(gallery_labels, q.shape[0], "gallery_labels", "gallery")
            if not np.array_equal(g_lab_check, q_lab):
                raise ValueError(
                    "gallery is the query tensor but gallery_labels differ from query_labels"
                )
        g, g_lab = q, q_lab
    else:
        if gallery_labels is None:
            raise ValueError("gallery was given without gallery_labels: pass both")
        g = as_embeddings(gallery, "gallery")
        g_lab = as_labels(gallery_labels, g.shape[0], "gallery_labels", "gallery")
        if g.shape[1] != q.shape[1]:
            raise ValueError(
                f"query has embedding dimension {q.shape[1]} but gallery has {g.shape[1]}: "
                "they must come from the same model head"
            )
        if g.device != q.device:
            raise ValueError(
                f"query is on {q.device} but gallery is on {g.device}: move both to one device"
            )
    if same_set and q.shape[0] < 2:
        raise ValueError("the query set needs at least 2 items to search against itself")
    # Dense ids over the union of labels: per-class counts become one bincount (O(N)).
    _, inverse = np.unique(np.concatenate([q_lab, g_lab]), return_inverse=True)
    q_ids = inverse[: q_lab.shape[0]].astype(np.int64)
    g_ids = q_ids if same_set else inverse[q_lab.shape[0] :].astype(np.int64)
    num_classes = int(inverse.max()) + 1
    counts = np.bincount(g_ids, minlength=num_classes)
    num_rel = counts[q_ids] - int(same_set)
    return RetrievalProblem(q, g, q_ids, g_ids, counts, num_rel, same_set)


def check_ks(ks: Any, num_gallery: int) -> tuple[int, ...]:
    """Validate the Recall@K cut-offs against the number of retrievable items."""
    if isinstance(ks, int | np.integer):
        ks = (ks,)
    try:
        ks = tuple(ks)
    except TypeError:
        raise TypeError(f"ks must be a sequence of ints, got {type(ks).__name__}") from None
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise TypeError(f"ks must hold ints, got {k!r} ({type(k).__name__})")
        if k < 1:
            raise ValueError(f"Recall@K needs K >= 1, got K={k}")
        if k > num_gallery:
            raise ValueError(
                f"Recall@{k} asks for more neighbours than the gallery holds "
                f"({num_gallery} retrievable items per query): use a smaller K"
            )
    return tuple(int(k) for k in ks)


def auto_chunk_size(num_gallery: int, target_bytes: int = 128 * 2**20) -> int:
    """Queries per chunk so that one float32 chunk x gallery matrix is about ``target_bytes``."""
    return max(1, target_bytes // (4 * max(num_gallery, 1)))
