"""Atomic file writes: a reader (or a crash) never sees half a file.

Checkpoints, reports and retrieval indexes all write through here: a temporary file in the target's
folder, flushed and fsynced, given the permissions a plain ``open`` would give, then renamed over
the target; the rename is made durable by fsyncing the folder.
"""

from __future__ import annotations

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
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # name the file the caller writes, not the temporary one
        raise OSError(err.errno, err.strerror, str(path)) from err
    try:
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})
        ) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o666 & ~current_umask())  # mkstemp makes it private; ours are not
        os.replace(tmp_name, path)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:
            # A write() that fails (ENOSPC) names no file; the user needs to know which one.
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        # Whatever interrupted the write (an exception, KeyboardInterrupt), drop the partial file.
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


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
