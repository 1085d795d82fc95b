"""A retrieval index kept in Milvus: the same searches as
:class:`~rankedlist.retrieval.embedding_index.EmbeddingIndex`, on a collection that a Milvus
server or cluster can shard and replicate and that several processes can search at once.

:meth:`MilvusIndex.create` writes embeddings, items and labels into a collection (replacing a
rankedlist collection of that name only once the new one is complete), :meth:`MilvusIndex.open`
opens one, :meth:`~MilvusIndex.add` appends rows all at once or not at all, and
:meth:`~MilvusIndex.search` / :meth:`~MilvusIndex.search_items` answer like an
``EmbeddingIndex``: ``(similarities, rows)`` ordered by similarity, then by row, and
:class:`~rankedlist.retrieval.embedding_index.Match` records. The layout of the collection:
:mod:`rankedlist.retrieval.milvus_collection`; the methods: :mod:`~.milvus_methods`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist.retrieval.embedding_index import Match
from rankedlist.retrieval.index_inputs import as_items, as_labels, as_matrix, normalize
from rankedlist.retrieval.milvus_collection import (
    KEY,
    build_name,
    check_writer,
    read_properties,
    release_lease,
    settle_collection,
    take_lease,
    write_properties,
)
from rankedlist.retrieval.milvus_connection import (
    CONNECT_TIMEOUT_S,
    DEFAULT_COLLECTION,
    check_collection_name,
    connect,
    milvus_errors,
)
from rankedlist.retrieval.milvus_methods import (
    MILVUS_MAX_TOPK,
    milvus_method_params,
    milvus_search_params,
    search_setting,
)
from rankedlist.retrieval.milvus_rows import (
    checked_items,
    existing_items,
    write_build,
    write_rows,
)

__all__ = ["MilvusIndex"]

# Extra places fetched beyond k, so ties at the k-th place are ordered by row, not by Milvus.
_TIE_MARGIN = 8


class MilvusIndex:
    """A rankedlist index in one Milvus collection (see the module docstring).

    Attributes: ``uri``, ``collection``, ``meta`` (the model, ``images_root``, ``classes``),
    ``method`` / ``method_params``, ``dim``, ``has_labels``; ``len(index)`` is the number of
    rows searches see, re-read from Milvus by every search.
    """

    def __init__(self, client: Any, uri: str, collection: str, props: dict[str, str]) -> None:
        self._client, self.uri, self.collection = client, uri, collection
        self._read(props)

    def _read(self, props: dict[str, str]) -> None:
        self.meta: dict[str, Any] = json.loads(props[KEY["meta"]])
        self.method_params: dict[str, Any] = json.loads(props[KEY["method"]])
        self.dim = int(props[KEY["embedding_dim"]])
        self.has_labels = props[KEY["has_labels"]] == "1"
        self._num_items = int(props[KEY["num_items"]])

    def __len__(self) -> int:
        return self._num_items

    def __repr__(self) -> str:
        return (
            f"MilvusIndex({self.uri}, collection={self.collection}, {len(self)} items, "
            f"dim={self.dim}, method={self.method})"
        )

    @property
    def method(self) -> str:
        """``"exact"``, ``"ivf"`` or ``"hnsw"``."""
        return self.method_params["method"]

    @property
    def labels(self) -> np.ndarray | None:
        """``None`` without labels; with labels, an empty array (the labels stay in Milvus,
        each search returns its rows')."""
        return np.empty(0, dtype=np.int64) if self.has_labels else None

    def refresh(self) -> None:
        """Re-read what the collection records (another process may have added rows)."""
        with milvus_errors(self.uri, self.collection):
            self._read(read_properties(self._client, self.collection, self.uri))

    def check_no_writer(self) -> None:
        """Raise now (FolderBusyError, one line) when another live process is writing the
        collection, before images are embedded for an add."""
        with milvus_errors(self.uri, self.collection):
            props = read_properties(self._client, self.collection, self.uri)
        check_writer(props, self.collection, self.uri)

    def close(self) -> None:
        """Close the connection (a Milvus Lite database is released at exit)."""
        self._client.close()

    # ------------------------------------------------------------------ open and create

    @classmethod
    def open(
        cls, uri: str, collection: str = DEFAULT_COLLECTION, *, timeout: float = CONNECT_TIMEOUT_S
    ) -> MilvusIndex:
        """Open the rankedlist collection ``collection`` at ``uri`` (a ``.db`` path for Milvus
        Lite, ``http://host:19530`` for a server) and load it for searching."""
        check_collection_name(collection)
        client = connect(uri, must_exist=True, timeout=timeout)
        with milvus_errors(uri, collection):
            settle_collection(client, collection)
            props = read_properties(client, collection, uri)
            if str(client.get_load_state(collection).get("state")) != "Loaded":
                client.load_collection(collection)
        return cls(client, uri, collection, props)

    @staticmethod
    def check_destination(uri: str, collection: str, *, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Raise now what :meth:`create` would fail on before writing: an unreachable server, a
        collection of that name that is not a rankedlist index, or one being written."""
        check_collection_name(collection)
        client = connect(uri, must_exist=False, timeout=timeout)
        try:
            with milvus_errors(uri, collection):
                settle_collection(client, collection)
                for name in (collection, build_name(collection)):
                    if client.has_collection(name):
                        check_writer(read_properties(client, name, uri), name, uri)
        finally:
            client.close()

    @classmethod
    def create(
        cls,
        uri: str,
        collection: str,
        embeddings: Any,
        items: Sequence[str | os.PathLike],
        labels: Any = None,
        meta: dict[str, Any] | None = None,
        method: str = "auto",
        *,
        timeout: float = CONNECT_TIMEOUT_S,
        **method_params: int | None,
    ) -> MilvusIndex:
        """Write a new index into ``collection`` at ``uri`` and return it opened.

        The rows go into a collection beside it first; only when all are written does it take
        the name, replacing a rankedlist index there (a collection that is not one is refused,
        untouched). ``method`` and ``method_params`` are those of ``EmbeddingIndex``
        (``nlist``, ``nprobe``, ``M``, ``ef_construction``, ``ef``).
        """
        check_collection_name(collection)
        emb = normalize(as_matrix(embeddings, "embeddings"), "embeddings")
        if emb.shape[0] == 0:
            raise ValueError("an index needs at least one embedding")
        names = checked_items(as_items(items, len(emb), "items"))
        lab = None if labels is None else as_labels(labels, len(emb), "labels")
        params = milvus_method_params(method, len(emb), **method_params)
        client = connect(uri, must_exist=False, timeout=timeout)
        staged = build_name(collection)
        with milvus_errors(uri, collection):
            settle_collection(client, collection)
            old_lease = None
            if client.has_collection(collection):  # not a rankedlist index, or busy: refused
                old_lease = take_lease(client, collection, uri, "index build")
            try:
                if client.has_collection(staged):
                    take_lease(client, staged, uri, "index build")  # a live build: refused
                    client.drop_collection(staged)  # a build a kill interrupted
                write_build(client, staged, emb, names, lab, dict(meta or {}), params)
            except BaseException:
                if old_lease is not None:
                    release_lease(client, collection, old_lease, uri)
                raise
            if old_lease is not None:
                client.drop_collection(collection)
            client.rename_collection(staged, collection)
        client.close()
        return cls.open(uri, collection, timeout=timeout)

    # ------------------------------------------------------------------ add

    def add(self, embeddings: Any, items: Sequence[str | os.PathLike], labels: Any = None) -> int:
        """Append rows, all or none: they become visible together when the collection's count
        is raised, after every row is written. Items already in the collection are skipped
        (with a warning), so an add run again adds nothing twice; rows a killed add left behind
        (never visible) are deleted first. Returns the number of rows added.

        One writer at a time: another live ``add`` or ``build`` of the collection is refused.
        The ``meta`` attribute (new class names, say) is written with the rows.
        """
        emb = as_matrix(embeddings, "embeddings")
        if emb.shape[1] != self.dim:
            raise ValueError(
                f"embeddings have dimension {emb.shape[1]} but collection {self.collection} at "
                f"{self.uri} holds {self.dim}-dimensional ones: embed them with the "
                "collection's model, or build a new collection"
            )
        emb = normalize(emb, "embeddings")
        names = checked_items(as_items(items, len(emb), "items"))
        if (labels is None) == self.has_labels:
            have = "has" if self.has_labels else "has no"
            raise ValueError(
                f"collection {self.collection} {have} labels: pass labels for all rows or none"
            )
        lab = None if labels is None else as_labels(labels, len(emb), "labels")
        with milvus_errors(self.uri, self.collection):
            lease = take_lease(self._client, self.collection, self.uri, "index add")
            try:
                return self._add_locked(emb, names, lab)
            finally:
                release_lease(self._client, self.collection, lease, self.uri)

    def _add_locked(self, emb: np.ndarray, names: list[str], lab: np.ndarray | None) -> int:
        client, name = self._client, self.collection
        meta = self.meta
        self._read(read_properties(client, name, self.uri))  # the count, as of the lease
        start = len(self)
        known = existing_items(client, name, names, start)
        if known:
            warnings.warn(
                f"{len(known)} of the {len(names)} images are in collection {name} already "
                f"(e.g. {sorted(known)[0]}); they are skipped",
                stacklevel=3,
            )
        keep = [i for i, item in enumerate(names) if item not in known]
        client.delete(name, filter=f"id >= {start}")  # what a killed add left: never visible
        if keep:
            rows = np.asarray(keep)
            labels = None if lab is None else lab[rows]
            items = [names[i] for i in keep]
            write_rows(client, name, emb[rows], items, labels, meta.get("classes"), start)
        write_properties(
            client,
            name,
            {KEY["num_items"]: str(start + len(keep)), KEY["meta"]: json.dumps(meta)},
        )
        self._num_items = start + len(keep)
        self.meta = meta
        return len(keep)

    # ------------------------------------------------------------------ search

    def search_setting(self, nprobe: int | None = None, ef: int | None = None) -> dict[str, int]:
        """The search parameter a search uses: the given one (checked) or the collection's."""
        return search_setting(self.method_params, nprobe, ef)

    def search(
        self, queries: Any, k: int = 10, *, nprobe: int | None = None, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar rows of each query: ``(similarities, rows)``, float32 and
        int64 ``(Q, k)``, by similarity descending, then row ascending (as the faiss index
        orders them); ``k`` is cut to the number of rows."""
        sims, rows, _ = self._search(queries, k, nprobe, ef, fields=())
        return sims, rows

    def search_items(
        self,
        queries: Any,
        k: int = 10,
        exclude_self: bool = False,
        *,
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> list[list[Match]]:
        """:meth:`search` as one list of :class:`Match` per query (row, item, path,
        similarity, label)."""
        if exclude_self:
            raise ValueError("a Milvus index is searched with queries; exclude_self does not apply")
        sims, rows, found = self._search(queries, k, nprobe, ef, fields=("item", "label"))
        out = []
        for q in range(len(rows)):
            hits = []
            for s, r in zip(sims[q], rows[q], strict=True):
                if r < 0:
                    continue  # an approximate search that found fewer than k rows
                entity = found[q][int(r)]
                path = self._as_path(entity["item"])
                label = int(entity["label"])
                hits.append(
                    Match(int(r), entity["item"], path, float(s), None if label < 0 else label)
                )
            out.append(hits)
        return out

    def item_path(self, row: int) -> Path:
        """Row ``row``'s item as a path (joined to ``meta["images_root"]`` when relative), read
        from the collection by the row's id. Raises IndexError for a row searches do not see
        (past the count read last, or not in the collection)."""
        row = int(row)
        if not 0 <= row < len(self):
            raise IndexError(f"no row {row} in collection {self.collection} ({len(self)} rows)")
        with milvus_errors(self.uri, self.collection):
            hits = self._client.query(
                self.collection, filter=f"id == {row}", output_fields=["item"]
            )
        if not hits:
            raise IndexError(f"no row {row} in collection {self.collection}")
        return self._as_path(hits[0]["item"])

    def _as_path(self, item: str) -> Path:
        path, root = Path(item), self.meta.get("images_root")
        return path if root is None or path.is_absolute() else Path(root) / path

    def _search(
        self, queries: Any, k: int, nprobe: int | None, ef: int | None, fields: tuple[str, ...]
    ) -> tuple[np.ndarray, np.ndarray, list[dict[int, dict]]]:
        q = as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(
                f"queries have dimension {q.shape[1]} but collection {self.collection} holds "
                f"{self.dim}-dimensional embeddings: embed them with the collection's model"
            )
        q = normalize(q, "queries")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.refresh()
        setting = self.search_setting(nprobe, ef)
        n = len(self)
        k = min(int(k), n, MILVUS_MAX_TOPK)
        sims = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        found: list[dict[int, dict]] = [{} for _ in range(len(q))]
        short = self._fetch(q, np.arange(len(q)), k, setting, fields, (sims, rows, found))
        if short.size and self.method == "ivf":  # too few rows in the probed lists: probe all
            every = {"nprobe": self.method_params["nlist"]}
            self._fetch(q, short, k, every, fields, (sims, rows, found))
        return sims, rows, found

    def _fetch(
        self,
        q: np.ndarray,
        todo: np.ndarray,
        k: int,
        setting: dict[str, int],
        fields: tuple[str, ...],
        out: tuple[np.ndarray, np.ndarray, list[dict[int, dict]]],
    ) -> np.ndarray:
        """Search the queries ``todo`` into ``out``; fetch more places while a tie runs past
        the last one fetched. Returns the queries that got fewer than ``k`` rows."""
        sims, rows, found = out
        n = len(self)
        limit, short = min(n, k + _TIE_MARGIN, MILVUS_MAX_TOPK), []
        while todo.size:
            params = milvus_search_params(self.method_params, setting, limit)
            with milvus_errors(self.uri, self.collection):
                result = self._client.search(
                    self.collection, data=q[todo].tolist(), limit=limit, filter=f"id < {n}",
                    search_params=params, output_fields=list(fields), anns_field="embedding",
                )  # fmt: skip
            unsettled = []
            for qi, hits in zip(todo.tolist(), result, strict=True):
                got = sorted((-float(h["distance"]), int(h["id"])) for h in hits)
                top = got[:k]
                sims[qi, : len(top)] = [-s for s, _ in top]
                rows[qi, : len(top)] = [r for _, r in top]
                found[qi] = {int(h["id"]): h.get("entity", {}) for h in hits}
                if len(got) < k:
                    short.append(qi)
                elif len(got) == limit > k and got[k - 1][0] == got[-1][0]:
                    unsettled.append(qi)  # rows past the last place fetched may tie with the k-th
            if limit >= min(n, MILVUS_MAX_TOPK):
                break
            todo, limit = np.asarray(unsettled, dtype=np.int64), min(n, 4 * limit, MILVUS_MAX_TOPK)
        return np.asarray(short, dtype=np.int64)
