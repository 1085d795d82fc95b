"""``rankedlist index build`` and ``index add`` with ``--backend milvus``: the images embedded as
for an index folder (:mod:`rankedlist.retrieval.images_to_index`), the rows written into a
Milvus collection (:class:`~rankedlist.retrieval.milvus_index.MilvusIndex`). ``index search``
needs nothing of its own: :func:`rankedlist.retrieval.index_actions.index_search` searches a
``MilvusIndex`` as it does an index folder.

Everything that can be checked before the images are embedded is: the address (an unreachable
server is one line at once), the collection (not a rankedlist index, or being written), the
method options.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = [
    "MilvusAddition",
    "check_backend_options",
    "milvus_add",
    "milvus_add_command",
    "milvus_build",
    "milvus_build_command",
    "milvus_name",
    "open_milvus_for_search",
]


def milvus_name(uri: str, collection: str) -> str:
    """How messages name a collection: ``collection C at URI``."""
    return f"collection {collection} at {uri}"


class MilvusAddition:
    """The rows one ``add`` brings, collected by
    :func:`~rankedlist.retrieval.images_to_index.add_images` (which takes it for the index: it
    reads ``meta`` and ``labels``, labels new class names, calls :meth:`add`) before
    :meth:`MilvusIndex.add <rankedlist.retrieval.milvus_index.MilvusIndex.add>` writes them
    all at once."""

    def __init__(self, index: Any) -> None:
        self.meta: dict[str, Any] = dict(index.meta)
        self.labels = index.labels
        self.items: list[str] = []  # the collection skips names it holds, with a warning
        self.embeddings: np.ndarray | None = None
        self.new_labels: np.ndarray | None = None

    def add(self, embeddings: np.ndarray, items: list[str], labels: Any = None) -> None:
        self.embeddings, self.items, self.new_labels = embeddings, list(items), labels


def milvus_build(
    images: str,
    uri: str,
    collection: str,
    *,
    method: str,
    params: dict[str, int],
    **embedding: Any,
) -> Any:
    """Embed ``images`` (``embedding``: checkpoint, model_file, labels_from_folders and the
    loader options of :func:`~rankedlist.retrieval.images_to_index.build_index`) and write
    them into ``collection`` at ``uri`` with ``method``. Returns ``(MilvusIndex, the
    embeddings as an exact in-memory index)``."""
    from rankedlist.retrieval import images_to_index
    from rankedlist.retrieval.milvus_index import MilvusIndex

    MilvusIndex.check_destination(uri, collection)
    embedded = images_to_index.build_index(images, method="exact", **embedding)
    index = MilvusIndex.create(
        uri, collection, embedded.embeddings, embedded.items, embedded.labels, embedded.meta,
        method, **params,
    )  # fmt: skip
    return index, embedded


def milvus_add(
    images: str,
    uri: str,
    collection: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    allow_other_model: bool = False,
    **loader: Any,
) -> tuple[Any, int, int]:
    """Embed ``images`` with the collection's model (or ``checkpoint`` / ``model``, checked
    against its fingerprint) and add them to ``collection`` at ``uri``, all or none. Returns
    ``(MilvusIndex, items before, items added)``."""
    from rankedlist.retrieval.images_to_index import add_images
    from rankedlist.retrieval.milvus_index import MilvusIndex

    index = MilvusIndex.open(uri, collection)
    index.check_no_writer()  # another add or build at work: refused before embedding
    before = len(index)
    addition = MilvusAddition(index)
    add_images(
        addition, images, checkpoint=checkpoint, model_file=model,
        index_name=milvus_name(uri, collection), allow_other_model=allow_other_model, **loader,
    )  # fmt: skip
    index.meta = addition.meta
    added = index.add(addition.embeddings, addition.items, addition.new_labels)
    return index, before, added


def check_backend_options(
    backend: str, folder: str | None, folder_option: str, uri: str | None, collection: str | None
) -> None:
    """``--backend`` and the options that name the index, checked together: a folder for
    faiss (``folder_option``: ``--out`` or ``--index``), ``--uri`` (and ``--collection``) for
    milvus."""
    if backend not in ("faiss", "milvus"):
        raise ValueError(f"--backend {backend!r}: choose faiss (an index folder) or milvus")
    if backend == "faiss":
        if uri is not None or collection is not None:
            given = "--uri" if uri is not None else "--collection"
            raise ValueError(
                f"{given} names a Milvus collection: pass --backend milvus with it, or leave it "
                f"out and name the index folder with {folder_option}"
            )
        if folder is None:
            raise ValueError(
                f"{folder_option} is required: the index folder (or pass --backend milvus "
                "--uri URI for a Milvus collection)"
            )
        return
    if folder is not None:
        raise ValueError(
            f"{folder_option} names an index folder, but --backend milvus keeps the index in a "
            "Milvus collection: leave it out and pass --uri (and --collection)"
        )
    if uri is None:
        raise ValueError(
            "--backend milvus needs --uri: a Milvus Lite file (e.g. index.db) or a server "
            "address (http://host:19530)"
        )


def milvus_build_command(
    images: str,
    uri: str,
    collection: str | None,
    method: str,
    params: dict[str, int],
    **embedding: Any,
) -> int:
    """``index build --backend milvus``: :func:`milvus_build`, and what it did, printed."""
    from rankedlist.retrieval.milvus_connection import DEFAULT_COLLECTION
    from rankedlist.retrieval.milvus_methods import describe_milvus_method

    collection = collection or DEFAULT_COLLECTION
    index, embedded = milvus_build(
        images, uri, collection, method=method, params=params, **embedding
    )
    used = index.meta.get("model_file") or index.meta["checkpoint"]
    print(
        f"indexed {len(index)} images ({index.dim}-d) from {images} with {used} into "
        f"{milvus_name(uri, collection)} ({describe_milvus_method(index.method_params)})"
    )
    if embedded.labels is not None and len(embedded) > 1:
        metrics = embedded.evaluate()
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "lone_queries")
        classes = len(index.meta.get("classes", []))
        print(f"self-retrieval ({classes} classes, exact search of the embeddings): {shown}")
    index.close()
    return 0


def milvus_add_command(images: str, uri: str, collection: str | None, **options: Any) -> int:
    """``index add --backend milvus``: :func:`milvus_add`, and what it did, printed."""
    from rankedlist.retrieval.milvus_connection import DEFAULT_COLLECTION
    from rankedlist.retrieval.milvus_methods import describe_milvus_method

    collection = collection or DEFAULT_COLLECTION
    index, before, added = milvus_add(images, uri, collection, **options)
    print(
        f"added {added} images from {images} to {milvus_name(uri, collection)}: {before} -> "
        f"{len(index)} items ({describe_milvus_method(index.method_params)})"
    )
    index.close()
    return 0


def open_milvus_for_search(uri: str, collection: str | None) -> tuple[Any, str]:
    """``index search --backend milvus``: the collection opened, and the name messages give it."""
    from rankedlist.retrieval.milvus_connection import DEFAULT_COLLECTION
    from rankedlist.retrieval.milvus_index import MilvusIndex

    collection = collection or DEFAULT_COLLECTION
    return MilvusIndex.open(uri, collection), milvus_name(uri, collection)
