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
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["IndexSource", "SearchIndex", "folder_index_source", "folder_version"]

# After a failed load, the same version is tried again at most this often.
_RETRY_S = 2.0


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
    """

    def __init__(
        self,
        load: Callable[[], SearchIndex],
        version: Callable[[], Hashable | None],
        accept: Callable[[SearchIndex], None] | None = None,
        name: str = "the index",
    ) -> None:
        self._load, self._version, self.accept, self.name = load, version, accept, name
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
            return self._index

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
            self.last_error = (
                f"{self.name} changed but could not be reloaded ({err}); still serving the "
                f"version loaded at {time.strftime('%H:%M:%S', time.localtime(self.loaded_at))}"
            )
            self._failed = (token, time.monotonic())
            return
        if self._version() != token:
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
