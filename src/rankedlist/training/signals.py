"""Signal handling: during training a signal is a flag checked after each step (a checkpoint is
written and the run stops cleanly); elsewhere (the final evaluation) it raises at once."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

__all__ = ["RunInterrupted", "Signalled", "raise_on_signals", "stop_on_signals"]


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, int | None]]:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT aborts."""
    flag: dict[str, int | None] = {"signal": None}

    def handler(signum, frame):  # noqa: ARG001
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay with the caller
        previous = {}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Signalled(Exception):
    """Raised by :func:`raise_on_signals`'s handler; ``signum`` is the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM raise at once (there is no step boundary to wait for in an evaluation)."""

    def handler(signum, frame):  # noqa: ARG001
        raise Signalled(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class RunInterrupted(RuntimeError):
    """A signal stopped the run after training, before its test metrics and report were written.

    ``signum`` is the signal; the message says what was saved and how to finish.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
