"""One writer per folder: an exclusive lock the operating system drops when its process dies.

A run folder (train, resume, overwrite, the final test) and an index folder (build, add) each have
one writer at a time. The lock is ``flock`` on a small file: beside an index folder
(``PARENT/.NAME.lock``), since an index is replaced by renaming whole folders and a lock file
inside would be swapped under its holder; inside a run folder (``.rankedlist.lock``), which is
never replaced and which ``--overwrite`` clears of the run's own files only. ``flock`` and not a
PID file, because the kernel releases it when the holder exits for any reason, ``kill -9``
included: a dead process never leaves a stale lock that blocks the user. The lock file keeps a
line naming its holder (process id, command, start time) for the message the second process
prints; it is left in place when released (deleting it would race with a process that just
opened it), except where the lock created the file and its folder still holds nothing else: a
run refused before writing anything leaves no lock file behind, and no folder if it created it.
That file is unlinked while still locked, and a process that takes a lock checks that the path
still names the file it locked (else it opens the path again), so two holders never lock two
files at once.

Readers (``evaluate``, ``index search``) take no lock: every file they read is replaced
atomically, so they see the old state or the new one.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["FolderBusyError", "FolderLock", "folder_lock", "lock_path"]

try:  # POSIX; on Windows the lock is a no-op (documented there, not relied on by the tests)
    import fcntl
except ImportError:  # pragma: no cover - not on the platforms we test
    fcntl = None  # type: ignore[assignment]


class FolderBusyError(ValueError):
    """Another live process holds the folder's lock (a ``ValueError``: one ``error:`` line)."""


def lock_path(folder: str | os.PathLike, inside: bool = False) -> Path:
    """The lock file of ``folder``: ``PARENT/.NAME.lock``, or ``FOLDER/.rankedlist.lock`` with
    ``inside`` (for a folder that is never replaced as a whole, such as a run folder)."""
    folder = Path(folder).absolute()
    return folder / ".rankedlist.lock" if inside else folder.parent / f".{folder.name}.lock"


class FolderLock:
    """An exclusive, non-blocking lock on ``folder``; :meth:`acquire` raises
    :class:`FolderBusyError` naming the process that holds it."""

    def __init__(self, folder: str | os.PathLike, what: str, inside: bool = False) -> None:
        self.folder = Path(folder)
        self.what = what  # "train" or "index add": said in the holder line
        self.path = lock_path(folder, inside)
        self._fd: int | None = None
        self._made_folder = False  # acquire created the folder the lock file is in
        self._made_file = False  # ... and the lock file

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        try:
            made = not self.path.parent.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            made_file = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            # A folder nobody can write needs no writer's lock: the first write fails with its
            # own message (read-only, permission), which says more than a lock could.
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return self
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise FolderBusyError(
                    f"{self.folder} is in use by another process ({holder}); wait for it to "
                    f"finish or stop it, or use another folder"
                ) from None
            except OSError:  # a file system without flock: run unlocked rather than refuse
                pass
            else:
                if not _names_file(self.path, fd):  # its holder removed it as we opened it
                    os.close(fd)
                    return self.acquire()
        program = Path(sys.argv[0]).name
        program = "rankedlist" if program in ("__main__.py", "-c", "") else program
        command = " ".join([program, *sys.argv[1:6]])
        holder = f"pid {os.getpid()}: {self.what}, `{command}`, since {time.strftime('%H:%M:%S')}"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        except OSError:  # opened read-only: the lock holds, only the holder line is missing
            pass
        self._fd = fd
        self._made_folder, self._made_file = made, made_file
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no holder line outlives its holder
        except OSError:
            pass
        if self._made_file:
            self._remove_if_alone()
        if fcntl is not None:
            # Unlock explicitly: a process forked while the lock was held (a loader worker)
            # shares the descriptor, and closing ours alone would leave the lock with it.
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _remove_if_alone(self) -> None:
        """Remove the lock file acquire created, and the folder if it created that too, when
        nothing else was written beside it."""
        folder = self.path.parent
        try:
            if [p.name for p in folder.iterdir()] == [self.path.name]:
                self.path.unlink()
                if self._made_folder:
                    folder.rmdir()  # fails harmlessly if another process just created a file
        except OSError:
            pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (not unlinked or replaced)."""
    try:
        now, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _read_holder(fd: int) -> str:
    # The holder writes its line just after taking the lock: wait a moment for it.
    for _ in range(20):
        try:
            text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.01)
    return "a process that is just starting"


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str, inside: bool = False) -> Iterator[FolderLock]:
    """``with folder_lock(index_dir, "index add"):`` hold the folder's lock for the block."""
    lock = FolderLock(folder, what, inside).acquire()
    try:
        yield lock
    finally:
        lock.release()
