"""The files of an index folder: their names, their checksums, and checked reads.

An index folder holds::

    embeddings.npy   N x D float32, L2-normalised rows
    items.json       N strings
    labels.npy       N int64 (only when the index has labels)
    index.faiss      the approximate search structure (only for the ivf and hnsw methods),
                     written by faiss's own ``write_index``
    meta.json        format, version, embedding_dim, num_items, search_method, created, the
                     model's fingerprint, and the size and sha256 of each file above
                     ("checksums", checked on every load)

How a folder is written (atomically, one writer at a time) and recovered after a kill is
:mod:`rankedlist.retrieval.index_swap`. Every read names the file that is wrong and says how to
rebuild the index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EMBEDDINGS_FILE",
    "FAISS_FILE",
    "INDEX_FORMAT",
    "INDEX_FORMAT_VERSION",
    "ITEMS_FILE",
    "LABELS_FILE",
    "META_FILE",
    "check_index_arrays",
    "check_index_destination",
    "file_checksums",
    "index_not_found",
    "read_json",
    "read_meta",
    "read_npy",
    "rebuild_hint",
    "verify_checksums",
    "write_json",
    "write_npy",
]

INDEX_FORMAT = "rankedlist-embedding-index"
#: 1: exact search over embeddings.npy; 2: adds index.faiss and meta["search_method"] (ivf,
#: hnsw). An exact index is still written as version 1, so older rankedlist versions read it.
INDEX_FORMAT_VERSION = 2
EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.json"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"
FAISS_FILE = "index.faiss"
# The files an index folder may hold: a folder of only these is a (damaged) index to replace.
INDEX_FILES = frozenset({EMBEDDINGS_FILE, ITEMS_FILE, LABELS_FILE, META_FILE, FAISS_FILE})


def one_line(text: object) -> str:
    return re.sub(r"\s*\n\s*", " ", str(text).strip())


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        # default=str: Paths and other simple objects in meta become their text form.
        json.dump(obj, fh, indent=2, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr)
        fh.flush()
        os.fsync(fh.fileno())


def file_checksums(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": hex}}`` of the files ``names`` in ``folder``."""
    return {
        name: {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
        for name in names
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: Path, meta: Mapping[str, Any], fix: str) -> None:
    """Each file that ``meta["checksums"]`` lists has the size and sha256 recorded at the save.

    A file that is missing is left to the check that needs it (it says why it is needed). An
    index saved before checksums were recorded has none: it is accepted unchecked (hashing it
    now would only confirm whatever it holds), and its next save records them.

    Raises:
        ValueError: a file differs, or the checksums entry itself is damaged; the message names
            the file and how to rebuild the index.
    """
    sums = meta.get("checksums")
    if sums is None:
        return
    ok = isinstance(sums, dict) and all(
        name in INDEX_FILES - {META_FILE}
        and isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("bytes"), int)
        for name, entry in sums.items()
    )
    if not ok:
        raise ValueError(
            f'{folder / META_FILE} has a damaged "checksums" entry (it was edited by hand or '
            f"is corrupt); {fix}"
        )
    for name, entry in sorted(sums.items()):
        path = folder / name
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size < entry["bytes"]:
            raise ValueError(
                f"{path} is truncated or corrupt ({size:,} bytes of the {entry['bytes']:,} the "
                f"index saved); {fix}"
            )
        if size != entry["bytes"]:
            raise ValueError(
                f"{path} is corrupt or from another index ({size:,} bytes, but the index saved "
                f"{entry['bytes']:,}); {fix}"
            )
        if _sha256(path) != entry["sha256"]:
            raise ValueError(
                f"{path} is corrupt: its sha256 differs from the one {META_FILE} recorded when "
                f"the index was saved (the file was damaged or changed since); {fix}"
            )


def index_not_found(folder: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"index folder {folder} not found; build one with `rankedlist index build`"
    )


def check_index_destination(folder: str | os.PathLike) -> Path:
    """Raise now what saving an index to ``folder`` would fail on; return the path.

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
        if entries - INDEX_FILES and not _is_index_meta(folder / META_FILE):
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
        probe = tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".check", dir=base)
    except OSError as err:
        raise type(err)(
            f"cannot write the index folder {folder}: {base} is not writable "
            f"({err.strerror or err}); choose another output folder"
        ) from err
    try:
        os.rmdir(probe)
    except FileNotFoundError:  # a writer's recovery removed it as a leftover: no matter
        pass
    return folder


def _is_index_meta(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == INDEX_FORMAT


def rebuild_hint(folder: Path, meta: Mapping[str, Any] | None) -> str:
    """How to rebuild the index, with the model and images it was built from when known."""
    meta = meta or {}
    model, images = meta.get("model_file"), meta.get("images_root")
    option = "--model"
    if not isinstance(model, str):
        model, option = meta.get("checkpoint"), "--checkpoint"
    model = shlex.quote(model) if isinstance(model, str) else "CHECKPOINT"
    images = shlex.quote(images) if isinstance(images, str) else "IMAGES"
    return (
        f"rebuild the index with `rankedlist index build {option} "
        f"{model} --images {images} --out {shlex.quote(str(folder))}`"
    )


def read_json(path: Path, fix: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is corrupt (not UTF-8 text: {one_line(err)}); {fix}") from err
    if not text.strip():
        raise ValueError(f"{path} is empty: the index is truncated; {fix}")
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(
            f"{path} is truncated or corrupt (not valid JSON: {one_line(err)}); {fix}"
        ) from err


def read_npy(path: Path, fix: str, mmap: bool = False) -> np.ndarray:
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
            f"{path} is truncated or corrupt (numpy cannot read it: {one_line(err)}); {fix}"
        ) from err


_KIND_WORDS = {int: "an integer", bool: "true or false", str: "a string", dict: "an object"}


def read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json``, checked: the index format and the keys an index save writes."""
    path = folder / META_FILE
    meta = read_json(path, rebuild_hint(folder, None))
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise ValueError(
            f'{path} is not the meta file of a rankedlist index (no "format": '
            f'"{INDEX_FORMAT}"); {rebuild_hint(folder, None)}'
        )
    fix = rebuild_hint(folder, meta)
    wanted = {"format_version": int, "num_items": int, "embedding_dim": int, "has_labels": bool}
    missing = [key for key in wanted if key not in meta]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(repr(k) for k in missing)}: it is damaged or was edited "
            f"by hand; {fix}"
        )
    optional = {
        "checkpoint": str,
        "model_file": str,
        "images_root": str,
        "search_method": dict,
        "checksums": dict,
        "model_fingerprint": str,
    }
    for key, kind in {**wanted, **optional}.items():
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


def check_index_arrays(
    folder: Path,
    meta: dict[str, Any],
    emb: np.ndarray,
    items: Any,
    labels: np.ndarray | None,
    fix: str,
) -> None:
    """The files of an index agree with each other and with ``meta.json``."""
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
