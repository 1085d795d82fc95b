"""The index a server searches, and its reload when another process changes it.

What a server needs of an index is small (:class:`SearchIndex`): ``search_items(queries, k)``
(each query's matches: row, item name, path, similarity, label), its size, method and ``meta``
(the model's fingerprint, the class names). :class:`~rankedlist.retrieval.embedding_index.
EmbeddingIndex` has it, and ``item_path(row)`` for thumbnails; another backend with the same
methods plugs in through :class:`IndexSource` with its own ``load`` and ``version`` (without
``item_path``, thumbnails are served for the rows the server has answered with).

:class:`IndexSource` asks ``version()`` before each search (for a folder: its identity and
``meta.json``'s, which an atomic swap by ``rankedlist index add`` changes) and, when it moved,
loads the new index and checks it (``accept``: the same model) before it replaces the one in
use; a search meanwhile is answered from the previous one. A version that cannot be read
(the folder missing for the moment of a swap) or a load that fails keeps the previous index,
so a half-written index is never served; the failure is kept for ``/info``.

A Milvus collection (:func:`milvus_index_source`) lives in a server that other processes
change: there is no previous version to keep. Its version is what the collection records (the
row count, the model, the method), re-read before each search; a version that is refused (the
collection rebuilt with another model) makes searches fail with :class:`IndexUnavailable`
(503, the reason) until the collection is one the model fits again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "IndexSource",
    "IndexUnavailable",
    "SearchIndex",
    "folder_index_source",
    "folder_version",
    "milvus_index_source",
    "public_uri",
]

# After a failed load, the same version is tried again at most this often.
_RETRY_S = 2.0


class IndexUnavailable(RuntimeError):
    """The index cannot be searched now (its server is gone, or a shared collection changed
    into one the model does not fit); the message says why and what to do."""


class SearchIndex(Protocol):
    """What a server searches (``EmbeddingIndex``'s names)."""

    meta: dict[str, Any]

    def __len__(self) -> int: ...

    @property
    def method(self) -> str: ...

    def search_items(self, queries: Any, k: int = 10) -> list[list[Any]]: ...


class IndexSource:
    """The current index: ``load()`` again whenever ``version()`` changes.

    Args:
        load: reads the index (raises ValueError / OSError when it cannot).
        version: a cheap token that changes when the index does; ``None`` while it cannot be
            told (keeps the current index).
        accept: checks a loaded index before it is served (raises ValueError to refuse it,
            e.g. an index rebuilt with another model); an attribute, set later by a server that
            opens its model with the first index.
        name: the index in messages.
        shared: the index lives in a server other processes change, so no previous version
            can be kept: while the newest version is refused, :meth:`current` raises
            :class:`IndexUnavailable`.
        location: what ``/info`` says of where the index is (``backend`` and its address).
    """

    def __init__(
        self,
        load: Callable[[], SearchIndex],
        version: Callable[[], Hashable | None],
        accept: Callable[[SearchIndex], None] | None = None,
        name: str = "the index",
        *,
        shared: bool = False,
        location: dict[str, str] | None = None,
    ) -> None:
        self._load, self._version, self.accept, self.name = load, version, accept, name
        self.shared = shared
        self.location = dict(location or {"backend": "faiss"})
        self._lock = threading.Lock()
        token = version()
        self._index = load()
        if accept is not None:
            accept(self._index)
        self._token = token
        self.loaded_at = time.time()
        self.reloads = 0
        self.last_error: str | None = None
        self._failed: tuple[Hashable, float] | None = None

    def current(self) -> SearchIndex:
        """The index to search now: a newer version if there is one and it loads and is
        accepted, else the one already in use."""
        token = self._version()
        if token is None or token == self._token:
            return self._index
        with self._lock:
            if token != self._token and not self._recently_failed(token):
                self._reload(token)
            if self.shared and self._failed is not None and self._failed[0] == token:
                raise IndexUnavailable(self.last_error)
            return self._index

    def close(self) -> None:
        """Close the index's connection, if it has one (a Milvus client)."""
        closer = getattr(self._index, "close", None)
        if callable(closer):
            closer()

    def _recently_failed(self, token: Hashable) -> bool:
        return (
            self._failed is not None
            and self._failed[0] == token
            and time.monotonic() - self._failed[1] < _RETRY_S
        )

    def _reload(self, token: Hashable) -> None:
        try:
            index = self._load()
            if self.accept is not None:
                self.accept(index)
        except (ValueError, OSError) as err:
            since = time.strftime("%H:%M:%S", time.localtime(self.loaded_at))
            self.last_error = (
                f"{self.name} changed and cannot be searched with this server's model ({err}); "
                "restart the server with the collection's model, or restore the collection"
                if self.shared
                else f"{self.name} changed but could not be reloaded ({err}); still serving the "
                f"version loaded at {since}"
            )
            self._failed = (token, time.monotonic())
            return
        if not self.shared and self._version() != token:
            return  # it changed again while it was read: the next search loads the newest
        self._index, self._token = index, token
        self.loaded_at = time.time()
        self.reloads += 1
        self.last_error, self._failed = None, None


def folder_version(folder: str | os.PathLike) -> tuple[int, ...] | None:
    """The folder's and its ``meta.json``'s device, inode, size and modification time (an
    index save swaps the folder and writes ``meta.json`` last); ``None`` while either is
    missing."""
    from rankedlist.retrieval.index_files import META_FILE

    folder = Path(folder)
    try:
        outer, meta = folder.stat(), (folder / META_FILE).stat()
    except OSError:
        return None
    return (
        outer.st_dev, outer.st_ino, meta.st_ino, meta.st_size, meta.st_mtime_ns,
    )  # fmt: skip


def folder_index_source(
    folder: str | os.PathLike, accept: Callable[[SearchIndex], None] | None = None
) -> IndexSource:
    """An :class:`IndexSource` of an index folder (``EmbeddingIndex.load``, read-only)."""
    from rankedlist.retrieval.embedding_index import EmbeddingIndex
    from rankedlist.retrieval.index_files import index_not_found

    folder = Path(folder)
    if not folder.is_dir():
        raise index_not_found(folder)
    return IndexSource(
        lambda: EmbeddingIndex.load(folder), lambda: folder_version(folder), accept, str(folder)
    )


def public_uri(uri: str) -> str:
    """``uri`` without the credentials a server address may carry (``user:password@``) and
    without its query (a token), for ``/info`` and messages."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in uri:
        return uri  # a Milvus Lite file
    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def milvus_index_source(
    uri: str, collection: str, accept: Callable[[SearchIndex], None] | None = None
) -> IndexSource:
    """An :class:`IndexSource` of a Milvus collection
    (:class:`~rankedlist.retrieval.milvus_index.MilvusIndex`, opened once; searches only).

    Its version is what the collection records, re-read before each search: an ``index add``
    by another process (the row count) or a rebuild (the model, the method) is seen by the
    next request. Raises ConnectionError (one line) for an unreachable server."""
    from rankedlist.retrieval.milvus_index import MilvusIndex

    index = MilvusIndex.open(uri, collection)
    name = f"collection {collection} at {public_uri(uri)}"

    def version() -> Hashable | None:
        try:
            index.refresh()  # the same object: the collection has no old version to keep
        except ConnectionError as err:  # the server is gone: nothing can be answered
            raise IndexUnavailable(f"{name} cannot be searched now: {err}") from None
        except (ValueError, OSError):
            return None  # the collection missing for the moment of a rebuild's rename
        recorded = (len(index), index.meta, index.method_params, index.dim, index.has_labels)
        return json.dumps(recorded, sort_keys=True, default=str)

    location = {"backend": "milvus", "uri": public_uri(uri), "collection": collection}
    return IndexSource(
        lambda: index, version, accept, name, shared=True, location=location
    )  # fmt: skip
