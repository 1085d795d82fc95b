"""Atomic file writes: a reader (or a crash) never sees half a file.

Checkpoints, reports and retrieval indexes all write through here: a temporary file in the target's
folder, flushed and fsynced, given the permissions a plain ``open`` would give, then renamed over
the target; the rename is made durable by fsyncing the folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable; best effort (not possible on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = True
) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    A write that fails for want of space or permission (``ENOSPC``, ``EROFS``, ...) raises
    ``OSError`` with that errno and ``path`` as its filename, whatever the writer made of it:
    ``torch.save``'s zip writer, for one, turns the ``OSError`` of a full disk into a
    ``RuntimeError`` ("unexpected pos") that has no errno. The temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # name the file the caller writes, not the temporary one
        raise OSError(err.errno, err.strerror, str(path)) from err
    raw = _TemporaryFile(fd, "wb", closefd=True)
    try:
        with _buffered(raw, binary) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o666 & ~current_umask())  # mkstemp makes it private; ours are not
        os.replace(tmp_name, path)
    except Exception as err:
        _discard(raw, tmp_name)
        disk = raw.failure or err
        if isinstance(disk, OSError) and disk.errno is not None and disk.filename is None:
            # A failed write (ENOSPC) names no file, and torch.save reports it as a RuntimeError
            # without errno: the user needs the reason and the file.
            raise OSError(disk.errno, disk.strerror, str(path)) from err
        raise
    except BaseException:
        # Whatever interrupted the write (KeyboardInterrupt, SystemExit), drop the partial file.
        _discard(raw, tmp_name)
        raise
    fsync_dir(path.parent)
    return path


class _TemporaryFile(io.FileIO):
    """The raw layer of the temporary file; it keeps the first ``OSError`` a write raised, so the
    errno survives a writer that reports the failure its own way."""

    failure: OSError | None = None

    def write(self, data: Any) -> int | None:
        try:
            return self._write(data)
        except OSError as err:
            if self.failure is None:
                self.failure = err
            raise

    def _write(self, data: Any) -> int | None:
        """The write to the disk (tests replace it to simulate a full disk)."""
        return super().write(data)


def _buffered(raw: _TemporaryFile, binary: bool) -> IO[Any]:
    """``raw`` as ``open(..., "wb")`` or ``open(..., "w", encoding="utf-8")`` would give it."""
    fh: IO[Any] = io.BufferedWriter(raw)
    return fh if binary else io.TextIOWrapper(fh, encoding="utf-8")


def _discard(raw: _TemporaryFile, tmp_name: str) -> None:
    """Close (if a failure left it open) and delete the temporary file."""
    with contextlib.suppress(OSError):
        raw.close()
    Path(tmp_name).unlink(missing_ok=True)


def remove_orphan_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed :func:`atomic_write` left in ``folder``.

    A SIGKILL between ``mkstemp`` and the rename leaves ``.NAME.XXXXXXXX.tmp`` behind (the
    target itself is intact). Call this when nothing else writes to ``folder``, e.g. when a run
    starts. Returns the removed paths.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for candidate in folder.glob(".*.tmp"):
        if _TEMPORARY.fullmatch(candidate.name) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


# mkstemp's random part is 8 characters of [a-z0-9_].
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda fh: fh.write(text), binary=False)
