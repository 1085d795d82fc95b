"""A saved, searchable set of embeddings: the last step of images -> model -> retrieval index.

An :class:`EmbeddingIndex` holds ``N x D`` L2-normalised float32 embeddings, one item name per
row (an image path, relative to ``meta["images_root"]`` when that is set, or any id), optional
integer labels, a JSON-serialisable ``meta`` dict (model spec, config, checkpoint, ...) and its
search method (:mod:`rankedlist.retrieval.index_methods`): ``exact`` cosine k-NN through
:func:`rankedlist.evaluation.nearest_neighbors` (faiss on CPU, torch on a GPU, ties broken by
the lower row), so an exact index answers exactly what the evaluation measured; or the
approximate faiss ``ivf`` / ``hnsw`` indexes for large collections, with ``nprobe`` / ``ef`` as
the speed / recall knob at search time. ``auto`` (the default) is exact below
:data:`~rankedlist.retrieval.index_methods.AUTO_EXACT_BELOW` items.

:meth:`EmbeddingIndex.save` writes an index folder atomically and :meth:`EmbeddingIndex.load`
reads it back, checked (the files: :mod:`rankedlist.retrieval.index_files`; the atomic write, its
lock and the recovery after a kill: :mod:`rankedlist.retrieval.index_swap`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rankedlist.retrieval.index_files import (
    EMBEDDINGS_FILE,
    FAISS_FILE,
    INDEX_FORMAT,
    INDEX_FORMAT_VERSION,
    ITEMS_FILE,
    LABELS_FILE,
    META_FILE,
    check_index_arrays,
    file_checksums,
    index_not_found,
    read_json,
    read_meta,
    read_npy,
    rebuild_hint,
    verify_checksums,
    write_json,
    write_npy,
)
from rankedlist.retrieval.index_inputs import as_items, as_labels, as_matrix, normalize
from rankedlist.retrieval.index_methods import SearchMethod
from rankedlist.retrieval.index_swap import (
    folder_identity,
    settle_index_folder,
    write_index_folder,
)

__all__ = [
    "EmbeddingIndex",
    "Match",
]

# Keys of meta.json that the index itself owns (and rewrites on every save).
_OWN_META = (
    "format",
    "format_version",
    "num_items",
    "embedding_dim",
    "has_labels",
    "saved",
    "search_method",
    "checksums",
)


class Match(NamedTuple):
    """One search hit: the row in the index, its item name and file path, similarity, label."""

    index: int
    item: str
    path: Path
    similarity: float
    label: int | None


class EmbeddingIndex:
    """Cosine search over a set of named embeddings, exact or approximate.

    Args:
        embeddings: ``(N, D)`` array or tensor; stored as float32 and L2-normalised.
        items: ``N`` names (image paths or ids), ``items[i]`` is row ``i``.
        labels: optional ``N`` integer labels (class of each item) for :meth:`evaluate` and
            right/wrong frames in search pictures.
        meta: JSON-serialisable facts about the index (model spec, config, checkpoint path,
            ``images_root`` that relative item paths are resolved against, class names).
        method: ``"auto"`` (exact below ``AUTO_EXACT_BELOW`` items, else ivf), ``"exact"``,
            ``"ivf"`` or ``"hnsw"`` (see :mod:`rankedlist.retrieval.index_methods`).
        **method_params: the method's build parameters and default search setting: ivf
            ``nlist``, ``nprobe``, ``training_sample``, ``seed``; hnsw ``M``,
            ``ef_construction``, ``ef``. Left out, they are chosen from N.
    """

    def __init__(
        self,
        embeddings: Any,
        items: Sequence[str | os.PathLike],
        labels: Any = None,
        meta: Mapping[str, Any] | None = None,
        method: str = "auto",
        **method_params: Any,
    ) -> None:
        emb = as_matrix(embeddings, "embeddings")
        if emb.shape[0] == 0:
            raise ValueError("an index needs at least one embedding")
        self._embeddings = normalize(emb, "embeddings")
        self._items = as_items(items, len(emb), "items")
        self._labels = None if labels is None else as_labels(labels, len(emb), "labels")
        self.meta: dict[str, Any] = dict(meta or {})
        self.meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self._method = SearchMethod.build(self._embeddings, method, **method_params)

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return self._embeddings.shape[0]

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex({len(self)} items, dim={self.dim}, method={self.method}, "
            f"labels={'yes' if self._labels is not None else 'no'})"
        )

    @property
    def dim(self) -> int:
        """The embedding dimension D."""
        return self._embeddings.shape[1]

    @property
    def method(self) -> str:
        """How the index searches: ``"exact"``, ``"ivf"`` or ``"hnsw"``."""
        return self._method.name

    @property
    def method_params(self) -> dict[str, Any]:
        """The method and its parameters, as ``meta.json`` records them (a copy)."""
        return dict(self._method.params)

    @property
    def embeddings(self) -> np.ndarray:
        """The ``(N, D)`` L2-normalised float32 embeddings (read-only view)."""
        view = self._embeddings.view()
        view.flags.writeable = False
        return view

    @property
    def items(self) -> list[str]:
        """The item names, one per row (a copy)."""
        return list(self._items)

    @property
    def labels(self) -> np.ndarray | None:
        """The int64 labels, or ``None``."""
        return None if self._labels is None else self._labels.copy()

    def item_path(self, row: int) -> Path:
        """Row ``row``'s item as a path: joined to ``meta["images_root"]`` when relative."""
        path = Path(self._items[row])
        root = self.meta.get("images_root")
        return path if root is None or path.is_absolute() else Path(root) / path

    def add(self, embeddings: Any, items: Sequence[str | os.PathLike], labels: Any = None) -> None:
        """Append rows. Labels are required exactly when the index already has labels.

        An approximate index takes the rows into its existing structure without being rebuilt
        (ivf: into the lists of the centroids trained at build time; hnsw: into the graph).
        """
        emb = as_matrix(embeddings, "embeddings")
        if emb.shape[1] != self.dim:
            raise ValueError(
                f"embeddings have dimension {emb.shape[1]} but this index holds {self.dim}-"
                "dimensional embeddings; embed them with the index's model"
            )
        new_items = as_items(items, len(emb), "items")
        if (labels is None) != (self._labels is None):
            have = "has" if self._labels is not None else "has no"
            raise ValueError(f"this index {have} labels: pass labels for all rows or for none")
        new_labels = None if labels is None else as_labels(labels, len(emb), "labels")
        emb = normalize(emb, "embeddings")
        self._method.add(emb)
        self._embeddings = np.concatenate([self._embeddings, emb])
        self._items.extend(new_items)
        if new_labels is not None:
            self._labels = np.concatenate([self._labels, new_labels])

    # ------------------------------------------------------------------ search

    def search(
        self,
        queries: Any = None,
        k: int = 10,
        exclude_self: bool = False,
        backend: str = "auto",
        *,
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most cosine-similar rows of each query, most similar first.

        Args:
            queries: ``(Q, D)`` (or ``(D,)``) embeddings, normalised here; ``None`` searches the
                index with its own rows.
            k: neighbours per query, at most the number of searchable rows (a larger ``k`` is
                cut to that, so "top 10 of 7 images" gives 7).
            exclude_self: with ``queries=None``, leave each row out of its own list (by row,
                so exact duplicates are still found).
            backend: exact search: ``"auto"``, ``"faiss"`` or ``"torch"`` (see
                ``nearest_neighbors``); an approximate index searches with faiss.
            nprobe: lists an ivf index scans (default: the one chosen at build).
            ef: candidates an hnsw index explores (default: the one chosen at build).

        Returns:
            ``(similarities, rows)``: float32 and int64 arrays of shape ``(Q, k)``; ties are
            ordered by the lower row first. Always ``k`` rows: places an approximate search
            could not fill are completed exactly.
        """
        from rankedlist.evaluation import nearest_neighbors  # brings torch (and faiss later)

        setting = self._method.search_setting(nprobe, ef)
        if exclude_self and queries is not None:
            raise ValueError(
                "exclude_self=True means 'the index against itself': pass queries=None"
            )
        if queries is None:
            q, gallery = self._embeddings, None
        else:
            q = as_matrix(queries, "queries")
            if q.shape[1] != self.dim:
                raise ValueError(
                    f"queries have dimension {q.shape[1]} but the index expects D = {self.dim}: "
                    "embed the queries with the model that built the index"
                )
            q, gallery = normalize(q, "queries"), self._embeddings
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        available = len(self) - int(exclude_self)
        if available < 1:
            raise ValueError("the index has a single row, which exclude_self leaves out")
        k = min(int(k), available)
        if self._method.approximate:
            if backend not in ("auto", "faiss"):
                raise ValueError(
                    f"an approximate ({self.method}) index searches with faiss; backend "
                    f"{backend!r} applies to exact indexes only"
                )
            own = np.arange(len(self)) if exclude_self else None
            return self._method.neighbors(q, self._embeddings, k, setting, own)
        sims, rows = nearest_neighbors(q, gallery, k, exclude_self, backend)
        return np.asarray(sims, dtype=np.float32), np.asarray(rows, dtype=np.int64)

    def search_setting(self, nprobe: int | None = None, ef: int | None = None) -> dict[str, int]:
        """The search parameter :meth:`search` would use (``{"nprobe": n}``, ``{"ef": n}`` or
        ``{}`` for an exact index): the given one, checked, or the index's default. Raises
        ValueError for a parameter that does not apply to this index's method."""
        return self._method.search_setting(nprobe, ef)

    def search_items(
        self,
        queries: Any = None,
        k: int = 10,
        exclude_self: bool = False,
        *,
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> list[list[Match]]:
        """:meth:`search`, as one list of :class:`Match` (row, item, path, similarity, label)
        per query."""
        sims, rows = self.search(queries, k, exclude_self, nprobe=nprobe, ef=ef)
        return [self.matches(s, r) for s, r in zip(sims, rows, strict=True)]

    def matches(self, similarities: np.ndarray, rows: np.ndarray) -> list[Match]:
        """One query's ``(similarities, rows)`` as :class:`Match` records."""
        return [
            Match(
                int(r),
                self._items[r],
                self.item_path(int(r)),
                float(s),
                None if self._labels is None else int(self._labels[r]),
            )
            for s, r in zip(similarities, rows, strict=True)
        ]

    def evaluate(
        self,
        ks: Sequence[int] = (1, 2, 4, 8),
        *,
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> dict[str, float]:
        """Recall@K, R-Precision and MAP@R of the index retrieving from itself (each row a
        query against the others): exact through
        :func:`rankedlist.evaluation.retrieval_metrics`, approximate through this index's own
        search (:func:`~rankedlist.retrieval.approximate_evaluation.metrics_from_neighbors`), so
        the numbers show what the approximation costs."""
        from rankedlist.evaluation import retrieval_metrics

        if self._labels is None:
            raise ValueError(
                "this index has no labels, so retrieval cannot be scored; build it with labels "
                "(e.g. labels_from_folders=True for class sub-folders)"
            )
        ks = tuple(k for k in ks if k <= len(self) - 1)
        if not ks:
            raise ValueError("evaluation needs at least two items in the index")
        if not self._method.approximate:
            self._method.search_setting(nprobe, ef)  # an exact index takes neither
            return retrieval_metrics(self._embeddings, self._labels, ks=ks)
        from rankedlist.retrieval.approximate_evaluation import metrics_from_neighbors

        setting = self._method.search_setting(nprobe, ef)

        def search(rows: np.ndarray, k: int) -> np.ndarray:
            q = np.ascontiguousarray(self._embeddings[rows])
            return self._method.neighbors(q, self._embeddings, k, setting, rows, False)[1]

        return metrics_from_neighbors(search, self._labels, self._labels, ks, same_set=True)

    # ------------------------------------------------------------------ files

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to ``folder`` atomically and return its path.

        The files (and ``index.faiss``, faiss's own file, for an approximate index) are written
        and fsynced in a temporary folder beside ``folder``, which then takes its place (an
        existing index there is replaced; a folder that is not an index is refused rather than
        deleted, see :func:`check_index_destination`). If anything fails the temporary folder
        is removed and the previous index, if any, is left as it was; a process killed during
        the save leaves the old index or the new one (the next open settles which). ``meta.json``
        records the size and sha256 of every file, which :meth:`load` checks.

        Holds the folder's lock while it writes
        (:func:`~rankedlist.retrieval.index_swap.index_lock`): raises
        :class:`~rankedlist.folder_lock.FolderBusyError` (a ValueError) when another process is
        writing the index.
        """

        def write(tmp: Path) -> None:
            write_npy(tmp / EMBEDDINGS_FILE, np.ascontiguousarray(self._embeddings))
            write_json(tmp / ITEMS_FILE, self._items)
            files = [EMBEDDINGS_FILE, ITEMS_FILE]
            if self._labels is not None:
                write_npy(tmp / LABELS_FILE, self._labels)
                files.append(LABELS_FILE)
            if self._method.approximate:
                self._method.write(tmp / FAISS_FILE)
                files.append(FAISS_FILE)
            meta = self._meta_for_file()
            meta["checksums"] = file_checksums(tmp, files)
            write_json(tmp / META_FILE, meta)  # last: the folder is complete once it exists

        return write_index_folder(folder, write)

    def _meta_for_file(self) -> dict[str, Any]:
        from rankedlist import __version__

        meta = {k: v for k, v in self.meta.items() if k not in _OWN_META}
        meta.setdefault("rankedlist_version", __version__)
        return {
            "format": INDEX_FORMAT,
            # An exact index needs nothing of format 2, so older versions can still read it.
            "format_version": INDEX_FORMAT_VERSION if self._method.approximate else 1,
            "num_items": len(self),
            "embedding_dim": self.dim,
            "has_labels": self._labels is not None,
            "search_method": self._method.params,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **meta,
        }

    @classmethod
    def load(
        cls, folder: str | os.PathLike, mmap: bool | None = None, verify: bool = True
    ) -> EmbeddingIndex:
        """Read an index written by :meth:`save`.

        Takes no lock: a save by another process may run meanwhile (the index read is the one
        before it or after it). What a killed save left beside the folder is settled first
        (:func:`~rankedlist.retrieval.index_swap.recover_index_folder`).

        Args:
            folder: the index folder.
            mmap: memory-map ``embeddings.npy`` (copy-on-write) instead of reading it, for large
                indexes; the file is never modified. ``None`` (default): map it for an
                approximate index, whose faiss index holds the rows it searches, and read it
                for an exact one.
            verify: check every file against the size and sha256 that ``meta.json`` recorded
                at the save (this reads each file in full, a memory-mapped one too), before
                faiss reads ``index.faiss``. An index saved before checksums were recorded is
                accepted unchecked.

        Raises:
            FileNotFoundError: the folder or one of its files is missing (named in the message).
            ValueError: a file is truncated, corrupt or not part of an index, or the files
                disagree (sizes, dimension, checksums); the message names the file and how to
                rebuild the index.
        """
        folder = Path(folder)
        settle_index_folder(folder)
        for attempt in range(3):
            before = folder_identity(folder)
            try:
                index = cls._read(folder, mmap, verify)
            except (ValueError, OSError):
                if attempt < 2 and folder_identity(folder) != before:
                    continue  # a save swapped the folder while it was read: read the new one
                raise
            if folder_identity(folder) == before:
                break
        return index

    @classmethod
    def _read(cls, folder: Path, mmap: bool | None, verify: bool) -> EmbeddingIndex:
        if not folder.is_dir():
            raise index_not_found(folder)
        meta: dict[str, Any] | None = None
        for name in (META_FILE, EMBEDDINGS_FILE, ITEMS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"index folder {folder} has no {name}: it is incomplete or not an index "
                    f"({rebuild_hint(folder, meta)})"
                )
            if name == META_FILE:
                meta = read_meta(folder)
        assert meta is not None
        fix = rebuild_hint(folder, meta)
        approximate = (meta.get("search_method") or {}).get("method", "exact") != "exact"
        mmap = approximate if mmap is None else mmap
        emb = read_npy(folder / EMBEDDINGS_FILE, fix, mmap)
        items = read_json(folder / ITEMS_FILE, fix)
        labels = None
        if meta["has_labels"]:
            if not (folder / LABELS_FILE).is_file():
                raise FileNotFoundError(
                    f"index folder {folder} has no {LABELS_FILE} although {META_FILE} says it "
                    f"has labels ({fix})"
                )
            labels = read_npy(folder / LABELS_FILE, fix)
        check_index_arrays(folder, meta, emb, items, labels, fix)
        if not mmap:
            # Saved rows are normalised already: check rather than re-normalise, so a loaded
            # index is bit-identical to the saved one (a memory map is not read in full here).
            norms = np.linalg.norm(emb, axis=1)
            if not (np.isfinite(norms).all() and np.allclose(norms, 1.0, atol=1e-3)):
                raise ValueError(
                    f"{folder / EMBEDDINGS_FILE} holds rows that are not unit vectors: it is "
                    f"corrupt or was not written by rankedlist ({fix}; or pass the array to "
                    "EmbeddingIndex(...) to normalise it)"
                )
        if verify:  # before faiss reads index.faiss: damaged vectors gave similarities of 1e36
            verify_checksums(folder, meta, fix)
        method = SearchMethod.from_meta(
            meta.get("search_method"), folder / FAISS_FILE, emb.shape[0], emb.shape[1], fix
        )
        index = cls.__new__(cls)
        index._embeddings = emb
        index._items = items
        index._labels = None if labels is None else labels.astype(np.int64)
        index.meta = {k: v for k, v in meta.items() if k not in _OWN_META}
        index._method = method
        return index
