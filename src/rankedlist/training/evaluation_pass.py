"""Embedding a split and computing its metrics: the fused embedding and each head's.

Each rank embeds a contiguous shard; the shards are gathered so the metrics see the whole split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from rankedlist.training import distributed as dist_utils
from rankedlist.training.amp import autocast
from rankedlist.training.config_schema import Config
from rankedlist.training.loader_workers import resolve_num_workers

__all__ = ["FUSED", "QueryThenGallery", "evaluate", "extract_embeddings", "format_metrics_table"]

#: The key of the test-time embedding (all heads concatenated, L2-normalised).
FUSED = "fused"


@torch.no_grad()
def extract_embeddings(
    model: nn.Module,
    dataset: Dataset,
    ctx: dist_utils.DistributedContext,
    batch_size: int = 256,
    amp: str = "none",
    num_workers: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """L2-normalised embeddings of every item, in dataset order: ``{"fused": ..., head: ...}``.

    Each rank embeds a contiguous shard; the shards are gathered so every rank gets the whole set.
    """
    base = dist_utils.unwrap_model(model)
    was_training = base.training
    base.eval()
    indices = dist_utils.shard_indices(len(dataset), ctx).tolist()
    loader = _batches(dataset, indices, batch_size, num_workers)
    chunks: dict[str, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)]
    for images, batch_labels in loader:
        for key, value in _embed(base, images.to(ctx.device), amp, ctx.device).items():
            chunks.setdefault(key, []).append(value.cpu())
        labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
    if not chunks:  # an empty shard (more ranks than items) still joins the gather
        size = int(base.input_size)
        probe = _embed(base, torch.zeros(1, 3, size, size, device=ctx.device), amp, ctx.device)
        chunks = {key: [value[:0].cpu()] for key, value in probe.items()}
    local = {key: torch.cat(values) for key, values in chunks.items()}
    gathered, all_labels = dist_utils.gather_eval(local, torch.cat(labels), ctx)
    base.train(was_training)
    return {k: v.numpy() for k, v in gathered.items()}, all_labels.numpy()


def _batches(dataset: Dataset, indices: list[int], batch_size: int, num_workers: int) -> Any:
    """``(images, labels)`` batches of ``dataset[indices]`` in order: made in one array operation
    each where the dataset can (the glyphs' ``fast_batch``), else through a DataLoader."""
    fast = getattr(dataset, "fast_batch", None)
    if fast is not None and fast(indices[:1]) is not None:
        return (fast(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size))
    shard = Subset(dataset, indices)
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _embed(model: nn.Module, images: torch.Tensor, amp: str, device: torch.device):
    with autocast(amp, device):
        outputs = model(images)
    outputs = {head: out.float() for head, out in outputs.items()}
    embs = {FUSED: model.fuse(outputs)}
    if len(outputs) > 1:
        embs.update({head: F.normalize(out, dim=1) for head, out in outputs.items()})
    return embs


def evaluate(
    model: nn.Module,
    query: Dataset,
    gallery: Dataset | None,
    protocol: str,
    ctx: dist_utils.DistributedContext,
    config: Config,
    with_nmi: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], np.ndarray]:
    """Metrics of the fused embedding and of each head; also the embeddings and labels.

    With a gallery (In-Shop) the returned embeddings are the queries followed by the gallery.
    Metrics are computed on rank 0 only (the other ranks get an empty dict).
    """
    from rankedlist.evaluation import evaluate_embeddings

    workers = resolve_num_workers(config.data.num_workers, ctx.device)
    kwargs = dict(
        ctx=ctx, batch_size=config.train.eval_batch_size, amp=config.train.amp, num_workers=workers
    )
    q_embs, q_labels = extract_embeddings(model, query, **kwargs)
    g_embs, g_labels = (None, None)
    if gallery is not None:
        g_embs, g_labels = extract_embeddings(model, gallery, **kwargs)
    metrics: dict[str, dict[str, float]] = {}
    for key, emb in q_embs.items():  # every rank: the work is split, the numbers are the same
        result = evaluate_embeddings(
            emb, q_labels, None if g_embs is None else g_embs[key], g_labels,
            protocol=protocol, with_nmi=with_nmi, distributed=ctx.is_distributed,
        )  # fmt: skip
        if ctx.is_main:
            metrics[key] = result
    if g_embs is None:
        return metrics, q_embs, q_labels
    joined = {k: np.concatenate([q_embs[k], g_embs[k]]) for k in q_embs}
    return metrics, joined, np.concatenate([q_labels, g_labels])


class QueryThenGallery:
    """In-Shop's queries followed by its gallery, as one dataset for the report's pictures."""

    def __init__(self, query: Any, gallery: Any) -> None:
        self.parts, self.classes = (query, gallery), query.classes

    def __len__(self) -> int:
        return len(self.parts[0]) + len(self.parts[1])

    def load_image(self, i: int) -> Any:
        n = len(self.parts[0])
        return self.parts[0].load_image(i) if i < n else self.parts[1].load_image(i - n)


def format_metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Fixed-width lines: one row per embedding (fused, heads), one column per metric."""
    keys = [
        k for k in metrics[FUSED]
        if k.startswith("recall@") or k in ("r_precision", "map@r", "nmi")
    ]  # fmt: skip
    width = max(len(name) for name in metrics)
    lines = [" ".join([" " * width, *(f"{k:>11}" for k in keys)])]
    for name, row in metrics.items():
        cells = (f"{row[k]:>11.4f}" if k in row else f"{'-':>11}" for k in keys)
        lines.append(" ".join([f"{name:<{width}}", *cells]))
    return lines
