"""An error a user can fix, as one ``error:`` line and an exit code: the one translation of
every ``rankedlist`` command.

:func:`describe_error` says what to print (or None for a bug, which keeps its traceback);
:func:`report_errors` runs a command's action with it. ``--debug`` raises the error instead.

Exit codes: 0 success; 1 the loss became non-finite; 2 a usage, config, data, file or disk error
(the message says what to fix); 128 + N a run stopped by signal N after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
from collections.abc import Callable

__all__ = ["EXIT_NONFINITE", "EXIT_USAGE", "describe_error", "one_line", "report_errors"]

EXIT_NONFINITE = 1
EXIT_USAGE = 2

# Commands whose config overrides are the way to fix a data error (data.options.skip_corrupt).
_CONFIG_COMMANDS = ("train", "evaluate", "tune")
# Commands whose every bad input or failed read or write is the user's to fix (a missing file,
# a folder that is not an index, a full disk, an image that does not decode).
_FILE_COMMANDS = ("index", "export")

_FREE_SPACE = "free some space there, or choose another folder (train.run_dir=PATH, --out)"
_WRITABLE = "choose a writable folder (train.run_dir=PATH, --out) or make this one writable"
# errno -> (what happened, the fix): a full disk wants space, a read-only one another folder.
_DISK_ERRORS = {
    errno.ENOSPC: ("no space left on device", _FREE_SPACE),
    errno.EDQUOT: ("disk quota exceeded", _FREE_SPACE),
    errno.EROFS: ("read-only file system", _WRITABLE),
    errno.EACCES: ("permission denied", _WRITABLE),
    errno.EPERM: ("operation not permitted", _WRITABLE),
}
# A permission error may come from a read, too: no "while writing" then.
_DISK_WHERE = {errno.EACCES: "on", errno.EPERM: "on"}
_DISK_AFTER = (
    "files written before stay intact, and a training run continues from its last checkpoint "
    "with --resume"
)


def report_errors(command: str, action: Callable[[argparse.Namespace], int], args) -> int:
    """``action(args)``; an error a user can fix is printed as one ``error:`` line and its exit
    code returned (raised with ``args.debug``); any other error is raised."""
    try:
        return action(args)
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        message, code = describe_error(exc, command, args)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return code


def describe_error(
    exc: Exception, command: str, args: argparse.Namespace | None = None
) -> tuple[str | None, int]:
    """One line for an error a user can fix (and the exit code), or None for a bug."""
    from rankedlist.data import CorruptImageError, MissingImagesError
    from rankedlist.extras import MissingExtraError
    from rankedlist.models.pretrained import PretrainedWeightsError
    from rankedlist.training.health import NonFiniteLossError
    from rankedlist.training.signals import RunInterrupted

    file_errors: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)
    file_errors += (MissingExtraError,)
    if command == "index":
        import torch

        if isinstance(exc, (*file_errors, torch.cuda.OutOfMemoryError)):
            return one_line(_index_message(exc, args)), EXIT_USAGE
    if command in _FILE_COMMANDS and isinstance(exc, file_errors):
        return one_line(_file_message(exc)), EXIT_USAGE
    if isinstance(exc, MissingExtraError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, NonFiniteLossError):
        return str(exc), EXIT_NONFINITE
    if isinstance(exc, RunInterrupted):
        return str(exc), 128 + int(exc.signum)
    if isinstance(exc, (CorruptImageError, MissingImagesError)) and command in _CONFIG_COMMANDS:
        # The data layer's hint is the Python option; here the way is a config override.
        return one_line(exc.describe("set data.options.skip_corrupt=true")), EXIT_USAGE
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError, PretrainedWeightsError)):
        return one_line(exc), EXIT_USAGE
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        reason, fix = _DISK_ERRORS[exc.errno]
        where = f" {_DISK_WHERE.get(exc.errno, 'while writing')} {exc.filename}"
        return f"{reason}{where if exc.filename else ''}; {fix}; {_DISK_AFTER}", EXIT_USAGE
    return None, 1


def _file_message(exc: BaseException) -> str:
    """An errno error that no step explained (a permission, a failing disk), else the text."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename} (check the path, its permissions and the disk)"
    return str(exc)


def _index_message(exc: BaseException, args: argparse.Namespace | None) -> str:
    """``rankedlist index``'s words for what the library says in Python's."""
    import torch

    from rankedlist.data import CorruptImageError

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return (
            f"out of GPU memory on {args.device} embedding {args.batch_size} images at a time; "
            "pass a smaller --batch-size or --device cpu"
        )
    if isinstance(exc, CorruptImageError):
        search = getattr(args, "index_command", None) == "search"
        skip = (
            "pass --skip-corrupt to skip unreadable query images with a warning"
            if search
            else "pass --skip-corrupt to leave unreadable images out of the index with a warning"
        )
        path = getattr(exc, "path", None)
        reason = getattr(exc, "reason", None) or (exc.__cause__ and str(exc.__cause__))
        if path is not None and reason:
            what = "query image" if search else "image"
            return f"cannot decode {what} {path}: {reason}. Replace or delete the file, or {skip}"
        return str(exc).replace("pass skip_corrupt=True to skip unreadable images", skip)
    return _file_message(exc)


def one_line(text: object) -> str:
    """The message on one line: each line break (and the spaces around it) becomes one space;
    an empty message is the error's type name."""
    line = re.sub(r"\s*\n\s*", " ", str(text).strip())
    return line or (type(text).__name__ if isinstance(text, BaseException) else "")
