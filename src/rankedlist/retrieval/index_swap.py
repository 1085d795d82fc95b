"""Writing an index folder: atomically, one writer at a time, and recovered after a kill.

:func:`write_index_folder` writes the files into a temporary folder beside the target
(``.NAME.XXXXXXXX.tmp``, meta.json last), then swaps it in with two renames: the index aside to
``.NAME.XXXXXXXX.old``, the new folder to ``NAME``; then the old one is deleted. A process
killed at any point leaves either the old or the new index, perhaps only in its hidden
folder: :func:`recover_index_folder` settles that on the next open and the next write. The
first rename is the commit point: before it the old index is kept, after it the new one
(complete: its meta.json names every file with its sha256) is put in place.

One writer at a time: every write holds the folder's lock (:mod:`rankedlist.folder_lock`,
``PARENT/.NAME.lock``, dropped by the operating system when its process dies), ``index add``
for its whole read-modify-write (:func:`index_lock`). Readers take no lock: they read the files
of one folder (:meth:`EmbeddingIndex.load` repeats a read that a swap overtook, seen by
:func:`folder_identity`) and take the lock only for the moment of a recovery, when nobody holds
it (:func:`settle_index_folder`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rankedlist.atomic_write import current_umask, fsync_dir
from rankedlist.folder_lock import FolderBusyError, FolderLock, lock_path
from rankedlist.retrieval.index_files import (
    EMBEDDINGS_FILE,
    FAISS_FILE,
    INDEX_FORMAT,
    ITEMS_FILE,
    LABELS_FILE,
    META_FILE,
    check_index_destination,
    verify_checksums,
)

__all__ = [
    "folder_identity",
    "index_lock",
    "recover_index_folder",
    "settle_index_folder",
    "write_index_folder",
]


def write_index_folder(folder: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary folder beside ``folder``, then make it ``folder``.

    An existing index there is replaced; a folder that is not an index is refused rather than
    deleted (see :func:`check_index_destination`). If anything fails the temporary folder is
    removed and the previous index, if any, is left as it was; if the process is killed, the
    next open or write finds the old or the new index (see :func:`recover_index_folder`).
    ``write`` must write ``meta.json`` last: a temporary folder counts as complete by it.

    Holds the folder's lock (unless this process holds it already, as ``index add`` does):
    raises :class:`~rankedlist.folder_lock.FolderBusyError` when another process writes it.
    """
    folder = check_index_destination(folder)
    parent = folder.parent
    with index_lock(folder, "index save"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
        try:
            write(tmp)
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; an index is not
            fsync_dir(tmp)  # the files' names are durable before the swap makes them the index
            _replace_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def _replace_dir(new: Path, target: Path) -> None:
    """Move the folder ``new`` to ``target``, replacing an existing ``target``.

    ``os.replace`` cannot move a folder over a non-empty one, so the old index is first renamed
    aside (same parent, so both renames are atomic) and removed only once the new one is in
    place; if the second rename fails the old one is put back. A kill between the renames
    leaves ``target`` missing, the old index in ``.old`` and the complete new one in ``.tmp``:
    :func:`recover_index_folder` puts the new one in place on the next open or write.
    """
    if not target.exists():
        os.replace(new, target)
        fsync_dir(target.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(old)  # only the unique name is wanted
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


# The locks this process holds, by lock file: a save inside `index add` reuses add's lock.
_HELD: dict[Path, FolderLock] = {}


@contextmanager
def index_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the index folder's lock for the block, and first settle an interrupted save.

    ``what`` ("index add", "index build") names the holder in the message another process
    gets: :class:`~rankedlist.folder_lock.FolderBusyError`, a ``ValueError`` naming the folder
    and the process that holds it. Re-entrant within a process. The operating system drops
    the lock when its process dies, ``kill -9`` included.
    """
    folder = Path(folder)
    key = lock_path(folder)
    if key in _HELD:
        yield
        return
    lock = FolderLock(folder, what).acquire()
    _HELD[key] = lock
    try:
        recover_index_folder(folder)
        yield
    finally:
        del _HELD[key]
        lock.release()


def _leftovers(folder: Path) -> list[Path]:
    """The hidden folders a save into ``folder`` makes beside it (``.NAME.XXXXXXXX.tmp``,
    ``.old``, ``.check``: ``tempfile.mkdtemp`` names), which only a killed save leaves."""
    pattern = re.compile(rf"\.{re.escape(folder.name)}\.[a-z0-9_]{{8}}\.(tmp|old|check)")
    try:
        entries = list(folder.parent.iterdir())
    except OSError:
        return []
    return sorted(
        p for p in entries if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
    )


def _is_complete_index(folder: Path) -> bool:
    """``folder`` holds a whole index: its meta.json, every file that meta.json needs, and (for
    an index with checksums, as every save now writes) each file with its recorded sha256."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        return False
    needed = [EMBEDDINGS_FILE, ITEMS_FILE]
    if meta.get("has_labels"):
        needed.append(LABELS_FILE)
    method = meta.get("search_method")
    if isinstance(method, dict) and method.get("method", "exact") != "exact":
        needed.append(FAISS_FILE)
    if not all((folder / name).is_file() for name in needed):
        return False
    try:
        verify_checksums(folder, meta, "")
    except (OSError, ValueError):
        return False
    return True


def recover_index_folder(folder: str | os.PathLike) -> Path | None:
    """Settle what a killed save left beside ``folder``; call it holding the folder's lock.

    * ``folder`` is there: it is the index (old or new); every leftover is an unfinished new
      folder or a superseded old one, and is deleted.
    * ``folder`` is missing (killed between the two renames, or in a first save): the newest
      complete ``.tmp`` (the new index, all of it written) takes its place, else the ``.old``
      (the previous index, as it was); the rest is deleted. A ``.tmp`` that is not complete
      was never an index and is deleted.

    Everything is decided before anything is deleted. Warns when an index was put back.
    Returns the leftover that became ``folder``, if any.
    """
    folder = Path(folder)
    leftovers = _leftovers(folder)
    if not leftovers:
        return None
    restored = None
    if not folder.exists() and not folder.is_symlink():
        news = [p for p in leftovers if p.suffix == ".tmp" and _is_complete_index(p)]
        olds = [p for p in leftovers if p.suffix == ".old"]  # the previous index, as it was
        for candidates in (news, olds):
            if candidates:
                restored = max(candidates, key=_saved_time)
                break
    if restored is not None:
        os.replace(restored, folder)
        fsync_dir(folder.parent)
        which = "new" if restored.suffix == ".tmp" else "previous"
        warnings.warn(
            f"{folder} was missing after a save that was interrupted; the {which} index was "
            f"put back in place from {restored.name}",
            stacklevel=2,
        )
    for path in leftovers:
        if path != restored:
            shutil.rmtree(path, ignore_errors=True)
    fsync_dir(folder.parent)
    return restored


def _saved_time(folder: Path) -> float:
    meta = folder / META_FILE
    return (meta if meta.is_file() else folder).stat().st_mtime


def settle_index_folder(folder: Path, wait_s: float = 10.0) -> None:
    """Before a read: recover an interrupted save when no process writes the index.

    A reader takes the lock only when a save left something behind, and only if it is free;
    if a writer holds it, that writer recovers (it did when it took the lock) and the reader
    waits, at most ``wait_s``, while the folder is missing between the writer's two renames.
    A place where no lock file can be made (read-only) is read as it is.
    """
    if not _leftovers(folder):
        return
    try:
        with index_lock(folder, "index recovery"):
            return
    except FolderBusyError:
        pass
    except OSError:
        return
    deadline = time.monotonic() + wait_s
    while not folder.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def folder_identity(folder: Path) -> tuple[int, int] | None:
    """The folder's device and inode (``None`` when missing): a swap changes them."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino
