"""The work behind the API: a model, an index and the batcher between them.

:func:`open_search_service` opens the index (a folder, read-only, or a Milvus collection,
searched only) and the model that embeds queries for it, the index's own or a given checkpoint
or export (ONNX, ``.pt2``, TorchScript), refused when its weights are not the index's
(:func:`~rankedlist.retrieval.index_models.model_for_index`); an index reloaded later must have
the same model fingerprint. Images go through the model's test-time transform
(for an export, the one its input contract names, as ``rankedlist export`` wrote it), then the
batcher, then the index.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from rankedlist.serve.embed_batcher import EmbedBatcher
from rankedlist.serve.index_source import IndexSource, IndexUnavailable, SearchIndex
from rankedlist.serve.thumbnails import ThumbnailCache
from rankedlist.serve.upload_images import UploadLimits, UploadRejected, quiet_pixel_warnings

__all__ = ["SearchService", "open_search_service"]


class SearchService:
    """Search and embed images; the server's one object.

    Args:
        index_model: an :class:`~rankedlist.retrieval.index_models.IndexModel` (model,
            transform, meta with ``model_fingerprint``).
        source: the :class:`IndexSource` of the index.
        device: where a PyTorch model runs.
        limits: the request limits (``max_k`` among them).
        window_s, max_batch: the batcher's window and largest batch.
    """

    def __init__(
        self,
        index_model: Any,
        source: IndexSource,
        device: str = "cpu",
        limits: UploadLimits | None = None,
        window_s: float = 0.005,
        max_batch: int = 32,
    ) -> None:
        self.index_model, self.source, self.device = index_model, source, device
        self.limits = limits or UploadLimits()
        self.batcher = EmbedBatcher(self._forward, window_s, max_batch)
        self.thumbnails = ThumbnailCache()
        self.started = time.time()
        quiet_pixel_warnings()

    # ------------------------------------------------------------------ the model

    def _forward(self, batch: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.index_model.model.embed(batch.to(self.device))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        """``(len(images), D)`` L2-normalised float32 embeddings of RGB ``PIL.Image``s."""
        prepared = [self.index_model.transform(image) for image in images]
        return self.batcher.embed(prepared)

    @property
    def runtime(self) -> str:
        """``pytorch`` (a checkpoint), ``onnxruntime``, ``torch.export`` (a ``.pt2``) or
        ``torchscript`` (or the model's class for another runtime)."""
        import torch

        model = self.index_model.model
        if isinstance(model, torch.nn.Module):
            return "pytorch"
        if hasattr(model, "session"):
            return "onnxruntime"
        formats = {"exported-program": "torch.export", "torchscript": "torchscript"}
        return formats.get(getattr(model, "format", None), type(model).__name__)

    # ------------------------------------------------------------------ search

    def search(
        self,
        images: Sequence[Any],
        k: int = 10,
        classes: Sequence[str] | None = None,
        min_similarity: float | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Each image's ``k`` nearest items, most similar first, as JSON-ready dicts.

        ``classes`` keeps only items of those classes, ``min_similarity`` only items at least
        that similar (fewer than ``k`` then). Raises :class:`UploadRejected` (400) for a
        ``k`` out of range or a filter this index cannot apply.
        """
        if isinstance(k, bool) or not 1 <= k <= self.limits.max_k:
            raise UploadRejected(
                400, f"k must be between 1 and {self.limits.max_k} (this server's limit), got {k}"
            )
        with _index_errors(self.source):
            index = self.source.current()
            keep = _filter(index, classes, min_similarity)
            queries = self.embed(images)
            if keep is None:
                found = index.search_items(queries, min(k, len(index)))
            else:
                found = [_filtered(index, q[None], k, keep, min_similarity) for q in queries]
        self.thumbnails.remember(index, [m for matches in found for m in matches])
        names = index.meta.get("classes")
        return [[_neighbour(rank, m, names) for rank, m in enumerate(f, 1)] for f in found]

    def thumbnail(self, item_id: str) -> bytes:
        """The PNG thumbnail of the item with row ``item_id`` (see :mod:`.thumbnails`)."""
        with _index_errors(self.source):
            return self.thumbnails.thumbnail(self.source.current(), item_id)

    def size(self) -> int:
        """The number of items searches see now (for ``/health``)."""
        with _index_errors(self.source):
            return len(self.source.current())

    # ------------------------------------------------------------------ about

    def info(self) -> dict[str, Any]:
        """The model, the index, the batching counters and the limits, for ``GET /info``."""
        from rankedlist import __version__

        with _index_errors(self.source):
            index = self.source.current()
        meta = self.index_model.meta
        classes = index.meta.get("classes")
        return {
            "version": __version__,
            "model": {
                "fingerprint": meta.get("model_fingerprint"),
                "runtime": self.runtime,
                "file": os.path.basename(str(self.index_model.source)),
                "input_style": meta.get("input_style"),
                "image_size": self.index_model.image_size,
            },
            "index": {
                **self.source.location,
                "name": _index_name(self.source),
                "size": len(index),
                "method": index.method,
                "dim": int(getattr(index, "dim", 0)) or None,
                "model_fingerprint": index.meta.get("model_fingerprint"),
                "classes": len(classes) if classes else 0,
                "loaded_at": time.strftime(
                    "%Y-%m-%dT%H:%M:%S%z", time.localtime(self.source.loaded_at)
                ),
                "reloads": self.source.reloads,
                "reload_error": self.source.last_error,
            },  # fmt: skip
            "batching": self.batcher.stats(),
            "limits": asdict(self.limits),
        }

    def close(self) -> None:
        """Stop the batcher's worker; close a Milvus connection (a Milvus Lite file is then
        free for another process)."""
        self.batcher.close()
        self.source.close()


def _index_name(source: IndexSource) -> str:
    where = source.location
    if where.get("backend") == "milvus":
        return where["collection"]
    return os.path.basename(source.name.rstrip("/"))


@contextlib.contextmanager
def _index_errors(source: IndexSource) -> Iterator[None]:
    """A server that went away, or a collection gone for a moment (a rebuild), as
    :class:`IndexUnavailable` (503) rather than a crash; a folder index reads no server."""
    try:
        yield
    except (ConnectionError, FileNotFoundError) as err:
        if not source.shared:
            raise
        raise IndexUnavailable(f"{source.name} cannot be searched now: {err}") from None


def _filter(
    index: SearchIndex, classes: Sequence[str] | None, min_similarity: float | None
) -> Callable[[Any], bool] | None:
    """The test a match must pass, or ``None`` without filters; refuses a class the index
    does not have (400)."""
    if not classes and min_similarity is None:
        return None
    wanted: set[int] | None = None
    if classes:
        names = index.meta.get("classes")
        if not names:
            raise UploadRejected(
                400, "this index has no class names, so results cannot be filtered by class"
            )
        lookup = {str(name): i for i, name in enumerate(names)}
        unknown = [c for c in classes if c not in lookup]
        if unknown:
            shown = ", ".join(map(str, names[:10])) + (", ..." if len(names) > 10 else "")
            raise UploadRejected(
                400, f"class {unknown[0]!r} is not in this index (its classes: {shown})"
            )
        wanted = {lookup[c] for c in classes}
    floor = -np.inf if min_similarity is None else float(min_similarity)
    return lambda m: m.similarity >= floor and (wanted is None or m.label in wanted)


def _filtered(
    index: SearchIndex, query: np.ndarray, k: int, keep: Callable[[Any], bool],
    min_similarity: float | None,
) -> list[Any]:  # fmt: skip
    """The ``k`` best matches that pass ``keep``: the search widened (x4) until it has them,
    has read the whole index, or has gone below ``min_similarity``."""
    n, want = len(index), k
    while True:
        matches = index.search_items(query, min(want, n))[0]
        kept = [m for m in matches if keep(m)]
        exhausted = want >= n or (
            min_similarity is not None and matches and matches[-1].similarity < min_similarity
        )
        if len(kept) >= k or exhausted:
            return kept[:k]
        want *= 4


def _neighbour(rank: int, match: Any, names: Sequence[str] | None) -> dict[str, Any]:
    label = match.label
    name = str(names[label]) if names and label is not None and 0 <= label < len(names) else None
    return {
        "rank": rank,
        "item_id": int(match.index),
        "item": match.item,
        "path": str(match.path),
        "class": name,
        "label_id": label,
        "similarity": float(match.similarity),
        "thumbnail": f"/items/{int(match.index)}/thumbnail",
    }


def open_search_service(
    index: str | os.PathLike | None = None,
    *,
    uri: str | None = None,
    collection: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    model_file: str | os.PathLike | None = None,
    device: str = "auto",
    allow_other_model: bool = False,
    limits: UploadLimits | None = None,
    window_s: float = 0.005,
    max_batch: int = 32,
) -> SearchService:
    """Open the index folder ``index``, or the Milvus ``collection`` at ``uri``, and its
    model (the given ``checkpoint`` or exported ``model_file``: ONNX, ``.pt2`` or
    TorchScript; else the one the index records), checked against each other."""
    from rankedlist.retrieval.index_models import check_index_model, model_for_index
    from rankedlist.serve.index_source import folder_index_source, milvus_index_source
    from rankedlist.training.checkpoint_model import resolve_device

    if (index is None) == (uri is None):
        raise ValueError("pass either an index folder (--index) or a Milvus --uri")
    if uri is not None:
        from rankedlist.retrieval.milvus_connection import DEFAULT_COLLECTION

        source = milvus_index_source(uri, collection or DEFAULT_COLLECTION)
    else:
        source = folder_index_source(index)
    name = source.name
    opened = model_for_index(
        source.current(), checkpoint, model_file, device, name, allow_other_model
    )
    given = checkpoint is not None or model_file is not None
    fingerprint = opened.meta.get("model_fingerprint")
    paths = (opened.source, opened.meta.get("exported_from"))

    def same_model(new: Any) -> None:
        check_index_model(new, fingerprint, paths, opened.option, name, given, allow_other_model)

    source.accept = same_model
    if hasattr(opened.model, "session"):
        dev = "cpu"  # onnxruntime runs on the CPU
    else:
        dev = str(resolve_device(device))
        opened.model.to(dev)  # a checkpoint's module, or a .pt2 / TorchScript export
    return SearchService(opened, source, dev, limits, window_s, max_batch)
