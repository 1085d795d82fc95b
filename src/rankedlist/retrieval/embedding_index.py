"""A saved, searchable set of embeddings: the last step of images -> model -> retrieval index.

An :class:`EmbeddingIndex` holds ``N x D`` L2-normalised float32 embeddings, one item name per
row (an image path, relative to ``meta["images_root"]`` when that is set, or any id), optional
integer labels and a JSON-serialisable ``meta`` dict (model spec, config, checkpoint, ...).
Search is exact cosine k-NN through :func:`rankedlist.evaluation.nearest_neighbors` (faiss on
CPU, torch on a GPU, ties broken by the lower row), so an index answers exactly what the
evaluation measured.

On disk an index is a folder::

    embeddings.npy   N x D float32
    items.json       N strings
    labels.npy       N int64 (only when the index has labels)
    meta.json        format, version, embedding_dim, num_items, created, rankedlist_version, ...

:meth:`EmbeddingIndex.save` writes the folder atomically: the files go to a temporary folder
beside the target, which then replaces it, so an interrupted save leaves the previous index
intact and no partial folder behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rankedlist.atomic_write import current_umask, fsync_dir

__all__ = [
    "EmbeddingIndex",
    "Match",
    "INDEX_FORMAT",
    "INDEX_FORMAT_VERSION",
    "check_index_destination",
]

INDEX_FORMAT = "rankedlist-embedding-index"
INDEX_FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.json"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"
# Keys of meta.json that the index itself owns (and rewrites on every save).
_OWN_META = ("format", "format_version", "num_items", "embedding_dim", "has_labels", "saved")
# The files an index folder may hold: a folder of only these is a (damaged) index to replace.
_INDEX_FILES = frozenset({EMBEDDINGS_FILE, ITEMS_FILE, LABELS_FILE, META_FILE})


class Match(NamedTuple):
    """One search hit: the row in the index, its item name and file path, similarity, label."""

    index: int
    item: str
    path: Path
    similarity: float
    label: int | None


def _as_matrix(x: Any, name: str) -> np.ndarray:
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


def _normalize(arr: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(
            f"{name} rows {zero[:10].tolist()} are all zeros and have no direction; a cosine "
            "index needs non-zero embeddings"
        )
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def _as_labels(labels: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be a 1-D array of {n} labels (one per row), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(arr == np.round(arr)):
            raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _as_items(items: Any, n: int, name: str) -> list[str]:
    if isinstance(items, str | os.PathLike):
        raise TypeError(f"{name} must be a sequence of names, got a single {type(items).__name__}")
    out = [os.fspath(i) if isinstance(i, os.PathLike) else i for i in items]
    bad = [i for i in out if not isinstance(i, str)]
    if bad:
        raise TypeError(f"{name} must be strings or paths, got {type(bad[0]).__name__}")
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries but there are {n} embeddings")
    return out


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        # default=str: Paths and other simple objects in meta become their text form.
        json.dump(obj, fh, indent=2, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr)
        fh.flush()
        os.fsync(fh.fileno())


class EmbeddingIndex:
    """Exact cosine search over a set of named embeddings.

    Args:
        embeddings: ``(N, D)`` array or tensor; stored as float32 and L2-normalised.
        items: ``N`` names (image paths or ids), ``items[i]`` is row ``i``.
        labels: optional ``N`` integer labels (class of each item) for :meth:`evaluate` and
            right/wrong frames in search pictures.
        meta: JSON-serialisable facts about the index (model spec, config, checkpoint path,
            ``images_root`` that relative item paths are resolved against, class names).
    """

    def __init__(
        self,
        embeddings: Any,
        items: Sequence[str | os.PathLike],
        labels: Any = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        emb = _as_matrix(embeddings, "embeddings")
        if emb.shape[0] == 0:
            raise ValueError("an index needs at least one embedding")
        self._embeddings = _normalize(emb, "embeddings")
        self._items = _as_items(items, len(emb), "items")
        self._labels = None if labels is None else _as_labels(labels, len(emb), "labels")
        self.meta: dict[str, Any] = dict(meta or {})
        self.meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return self._embeddings.shape[0]

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex({len(self)} items, dim={self.dim}, "
            f"labels={'yes' if self._labels is not None else 'no'})"
        )

    @property
    def dim(self) -> int:
        """The embedding dimension D."""
        return self._embeddings.shape[1]

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
        """Append rows. Labels are required exactly when the index already has labels."""
        emb = _as_matrix(embeddings, "embeddings")
        if emb.shape[1] != self.dim:
            raise ValueError(
                f"embeddings have dimension {emb.shape[1]} but this index holds {self.dim}-"
                "dimensional embeddings; embed them with the index's model"
            )
        new_items = _as_items(items, len(emb), "items")
        if (labels is None) != (self._labels is None):
            have = "has" if self._labels is not None else "has no"
            raise ValueError(f"this index {have} labels: pass labels for all rows or for none")
        new_labels = None if labels is None else _as_labels(labels, len(emb), "labels")
        emb = _normalize(emb, "embeddings")
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
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most cosine-similar rows of each query, most similar first.

        Args:
            queries: ``(Q, D)`` (or ``(D,)``) embeddings, normalised here; ``None`` searches the
                index with its own rows.
            k: neighbours per query, at most the number of searchable rows (a larger ``k`` is
                cut to that, so "top 10 of 7 images" gives 7).
            exclude_self: with ``queries=None``, leave each row out of its own list (by row,
                so exact duplicates are still found).
            backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (see ``nearest_neighbors``).

        Returns:
            ``(similarities, rows)``: float32 and int64 arrays of shape ``(Q, k)``; ties are
            ordered by the lower row first.
        """
        from rankedlist.evaluation import nearest_neighbors  # brings torch (and faiss later)

        if exclude_self and queries is not None:
            raise ValueError(
                "exclude_self=True means 'the index against itself': pass queries=None"
            )
        if queries is None:
            q, gallery = self._embeddings, None
        else:
            q = _as_matrix(queries, "queries")
            if q.shape[1] != self.dim:
                raise ValueError(
                    f"queries have dimension {q.shape[1]} but the index expects D = {self.dim}: "
                    "embed the queries with the model that built the index"
                )
            q, gallery = _normalize(q, "queries"), self._embeddings
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        available = len(self) - int(exclude_self)
        if available < 1:
            raise ValueError("the index has a single row, which exclude_self leaves out")
        sims, rows = nearest_neighbors(q, gallery, min(int(k), available), exclude_self, backend)
        return np.asarray(sims, dtype=np.float32), np.asarray(rows, dtype=np.int64)

    def search_items(
        self, queries: Any = None, k: int = 10, exclude_self: bool = False
    ) -> list[list[Match]]:
        """:meth:`search`, as one list of :class:`Match` (row, item, path, similarity, label)
        per query."""
        sims, rows = self.search(queries, k, exclude_self)
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

    def evaluate(self, ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
        """Recall@K, R-Precision and MAP@R of the index retrieving from itself (each row a
        query against the others), via :func:`rankedlist.evaluation.retrieval_metrics`."""
        from rankedlist.evaluation import retrieval_metrics

        if self._labels is None:
            raise ValueError(
                "this index has no labels, so retrieval cannot be scored; build it with labels "
                "(e.g. labels_from_folders=True for class sub-folders)"
            )
        ks = tuple(k for k in ks if k <= len(self) - 1)
        if not ks:
            raise ValueError("evaluation needs at least two items in the index")
        return retrieval_metrics(self._embeddings, self._labels, ks=ks)

    # ------------------------------------------------------------------ files

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to ``folder`` atomically and return its path.

        The files are written and fsynced in a temporary folder beside ``folder``, which then
        takes its place (an existing index there is replaced; a folder that is not an index is
        refused rather than deleted, see :func:`check_index_destination`). If anything fails the
        temporary folder is removed and the previous index, if any, is left as it was.
        """
        folder = check_index_destination(folder)
        parent = folder.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
        try:
            _write_npy(tmp / EMBEDDINGS_FILE, self._embeddings)
            _write_json(tmp / ITEMS_FILE, self._items)
            if self._labels is not None:
                _write_npy(tmp / LABELS_FILE, self._labels)
            _write_json(tmp / META_FILE, self._meta_for_file())
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; an index is not
            _replace_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(parent)
        return folder

    def _meta_for_file(self) -> dict[str, Any]:
        from rankedlist import __version__

        meta = {k: v for k, v in self.meta.items() if k not in _OWN_META}
        meta.setdefault("rankedlist_version", __version__)
        return {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "num_items": len(self),
            "embedding_dim": self.dim,
            "has_labels": self._labels is not None,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **meta,
        }

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = False) -> EmbeddingIndex:
        """Read an index written by :meth:`save`.

        Args:
            folder: the index folder.
            mmap: memory-map ``embeddings.npy`` (copy-on-write) instead of reading it, for large
                indexes; the file is never modified.

        Raises:
            FileNotFoundError: the folder or one of its files is missing (named in the message).
            ValueError: a file is truncated, corrupt or not part of an index, or the files
                disagree (sizes, dimension); the message names the file and how to rebuild the
                index.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"index folder {folder} not found; build one with `rankedlist index build`"
            )
        meta: dict[str, Any] | None = None
        for name in (META_FILE, EMBEDDINGS_FILE, ITEMS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"index folder {folder} has no {name}: it is incomplete or not an index "
                    f"({_rebuild_hint(folder, meta)})"
                )
            if name == META_FILE:
                meta = _read_meta(folder)
        assert meta is not None
        fix = _rebuild_hint(folder, meta)
        emb = _read_npy(folder / EMBEDDINGS_FILE, fix, mmap)
        items = _read_json(folder / ITEMS_FILE, fix)
        labels = None
        if meta["has_labels"]:
            if not (folder / LABELS_FILE).is_file():
                raise FileNotFoundError(
                    f"index folder {folder} has no {LABELS_FILE} although {META_FILE} says it "
                    f"has labels ({fix})"
                )
            labels = _read_npy(folder / LABELS_FILE, fix)
        if emb.ndim != 2 or emb.shape[1] == 0:
            raise ValueError(
                f"{folder / EMBEDDINGS_FILE} holds an array of shape {emb.shape}, not (N, D): it "
                f"is corrupt ({fix})"
            )
        if emb.dtype != np.float32:
            raise ValueError(
                f"{folder / EMBEDDINGS_FILE} holds {emb.dtype}, not float32: it was not written "
                f"by rankedlist ({fix})"
            )
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(
                f"{folder / ITEMS_FILE} is not a list of item names: it is corrupt ({fix})"
            )
        if labels is not None and (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(
                f"{folder / LABELS_FILE} holds {labels.dtype} of shape {labels.shape}, not one "
                f"integer label per item: it is corrupt ({fix})"
            )
        sizes = {EMBEDDINGS_FILE: emb.shape[0], ITEMS_FILE: len(items)}
        if labels is not None:
            sizes[LABELS_FILE] = len(labels)
        sizes[f"{META_FILE} num_items"] = meta["num_items"]
        if len(set(sizes.values())) != 1:
            detail = ", ".join(f"{k}: {v}" for k, v in sizes.items())
            raise ValueError(
                f"index folder {folder} is inconsistent ({detail}): a file is truncated or from "
                f"another index ({fix})"
            )
        if meta["embedding_dim"] != emb.shape[1]:
            raise ValueError(
                f"{folder / META_FILE} says embedding_dim {meta['embedding_dim']} but "
                f"{EMBEDDINGS_FILE} has {emb.shape[1]} columns ({fix})"
            )
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
        index = cls.__new__(cls)
        index._embeddings = emb
        index._items = items
        index._labels = None if labels is None else labels.astype(np.int64)
        index.meta = {k: v for k, v in meta.items() if k not in _OWN_META}
        return index


def check_index_destination(folder: str | os.PathLike) -> Path:
    """Raise now what :meth:`EmbeddingIndex.save` to ``folder`` would fail on; return the path.

    ``folder`` may be missing (it and its parents are created), empty, or an index to replace
    (its ``meta.json`` says so, or it holds nothing but index files, e.g. a damaged index). A
    file, or a folder with anything else in it, is refused rather than deleted; so is a place
    that cannot be written (a read-only disk or folder, a file where a parent should be). Call
    it before a long embedding run so that a bad output folder fails in a second, not after.

    Raises:
        FileExistsError: ``folder`` is a file or a folder that is not an index.
        NotADirectoryError: a parent of ``folder`` is a file.
        PermissionError / OSError: the folder that would receive the index is not writable.
    """
    folder = Path(folder)
    if folder.is_file() or (folder.exists() and not folder.is_dir()):
        raise FileExistsError(
            f"{folder} is a file, not an index folder; choose another output folder"
        )
    if folder.is_dir():
        entries = {e.name for e in folder.iterdir()}
        if entries - _INDEX_FILES and not _is_index_meta(folder / META_FILE):
            raise FileExistsError(
                f"{folder} exists and is not an embedding index (no {META_FILE} of an index; it "
                f"holds {', '.join(sorted(entries)[:3])}{', ...' if len(entries) > 3 else ''}); "
                "choose another output folder or delete it"
            )
    # The nearest existing folder above: the index is written beside ``folder`` in its parent,
    # which is created below this one when missing.
    base = folder.absolute().parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise NotADirectoryError(
            f"cannot create the index folder {folder}: {base} is a file, not a folder; choose "
            "another output folder"
        )
    try:  # os.access() is wrong for root and for read-only mounts; try it
        os.rmdir(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".check", dir=base))
    except OSError as err:
        raise type(err)(
            f"cannot write the index folder {folder}: {base} is not writable "
            f"({err.strerror or err}); choose another output folder"
        ) from err
    return folder


def _is_index_meta(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == INDEX_FORMAT


def _one_line(text: object) -> str:
    return re.sub(r"\s*\n\s*", " ", str(text).strip())


def _rebuild_hint(folder: Path, meta: Mapping[str, Any] | None) -> str:
    """How to rebuild the index, with the checkpoint and images it was built from when known."""
    meta = meta or {}
    ckpt, images = meta.get("checkpoint"), meta.get("images_root")
    ckpt = shlex.quote(ckpt) if isinstance(ckpt, str) else "CHECKPOINT"
    images = shlex.quote(images) if isinstance(images, str) else "IMAGES"
    return (
        "rebuild the index with `rankedlist index build --checkpoint "
        f"{ckpt} --images {images} --out {shlex.quote(str(folder))}`"
    )


def _read_json(path: Path, fix: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is corrupt (not UTF-8 text: {_one_line(err)}); {fix}") from err
    if not text.strip():
        raise ValueError(f"{path} is empty: the index is truncated; {fix}")
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(
            f"{path} is truncated or corrupt (not valid JSON: {_one_line(err)}); {fix}"
        ) from err


def _read_npy(path: Path, fix: str, mmap: bool = False) -> np.ndarray:
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: the index is truncated; {fix}")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":  # numpy would call it pickled data and suggest allow_pickle
        raise ValueError(f"{path} is corrupt (not a numpy .npy array file); {fix}")
    try:
        return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except PermissionError:
        raise
    except (ValueError, EOFError, OSError) as err:  # numpy's words for a short or foreign file
        raise ValueError(
            f"{path} is truncated or corrupt (numpy cannot read it: {_one_line(err)}); {fix}"
        ) from err


_KIND_WORDS = {int: "an integer", bool: "true or false", str: "a string"}


def _read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json``, checked: the index format and the keys :meth:`EmbeddingIndex.save` writes."""
    path = folder / META_FILE
    meta = _read_json(path, _rebuild_hint(folder, None))
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise ValueError(
            f'{path} is not the meta file of a rankedlist index (no "format": '
            f'"{INDEX_FORMAT}"); {_rebuild_hint(folder, None)}'
        )
    fix = _rebuild_hint(folder, meta)
    wanted = {"format_version": int, "num_items": int, "embedding_dim": int, "has_labels": bool}
    missing = [key for key in wanted if key not in meta]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(repr(k) for k in missing)}: it is damaged or was edited "
            f"by hand; {fix}"
        )
    for key, kind in {**wanted, "checkpoint": str, "images_root": str}.items():
        value = meta.get(key)
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if key in meta and not ok and not (value is None and key not in wanted):
            raise ValueError(
                f"{path} has {key} = {value!r}, not {_KIND_WORDS[kind]}: it is damaged or was "
                f"edited by hand; {fix}"
            )
    if meta["format_version"] > INDEX_FORMAT_VERSION:
        raise ValueError(
            f"{folder} was written in index format {meta['format_version']}, newer than this "
            f"rankedlist understands ({INDEX_FORMAT_VERSION}); upgrade rankedlist"
        )
    return meta


def _replace_dir(new: Path, target: Path) -> None:
    """Move the folder ``new`` to ``target``, replacing an existing ``target``.

    ``os.replace`` cannot move a folder over a non-empty one, so the old index is first renamed
    aside (same parent, so both renames are atomic) and removed only once the new one is in
    place; if the second rename fails the old one is put back.
    """
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(old)  # only the unique name is wanted
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
